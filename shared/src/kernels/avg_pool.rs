//! Average pooling, int8, TFLite rounding: the mean of the in-bounds taps, rounded half away
//! from zero. Input and output share quantization.

use super::{pool_s8, Pool};
use crate::Error;

pub fn avg_pool_s8_scratch_bytes(_p: &Pool) -> usize {
    0
}

pub fn avg_pool_s8(p: &Pool, input: &[i8], output: &mut [i8], _scratch: &mut [u8]) -> Result<(), Error> {
    pool_s8(p, input, output, true)
}
