//! Max pooling, int8. Input and output share quantization: no requantization.

use super::{pool_s8, Pool};
use crate::Error;

pub fn max_pool_s8_scratch_bytes(_p: &Pool) -> usize {
    0
}

pub fn max_pool_s8(p: &Pool, input: &[i8], output: &mut [i8], _scratch: &mut [u8]) -> Result<(), Error> {
    pool_s8(p, input, output, false)
}
