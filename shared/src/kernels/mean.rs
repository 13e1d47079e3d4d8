//! Mean over height and width of an int8 tensor (TFLite MEAN with axes [1, 2]), as TFLM computes
//! it (`reference_ops::QuantizedMeanOrSum`): `sum(x) - input_zp * n` requantized with one
//! multiplier that folds `input_scale / output_scale` and the division by `n` together (the
//! host computes it: `m' = (m << k) / n`, `shift' = shift - k`), then the output zero point.

use crate::fixedpoint::multiply_by_quantized_multiplier;
use crate::types::{expect_len, Shape};
use crate::types::Bounded;
use crate::Error;

#[derive(Clone, Copy, Debug)]
pub struct Mean {
    pub input: Shape,
    pub input_zp: i32,
    pub output_zp: i32,
    /// `QuantizeMultiplier(input_scale / output_scale)` with the division by the element count folded in.
    pub multiplier: i32,
    pub shift: i32,
    pub act_min: i8,
    pub act_max: i8,
}

pub fn mean_s8_scratch_bytes(_p: &Mean) -> usize {
    0
}

pub fn mean_s8(p: &Mean, input: &[i8], output: &mut [i8], _scratch: &mut [u8]) -> Result<(), Error> {
    expect_len(input.len(), p.input.len()?)?;
    let c = p.input.c as usize;
    expect_len(output.len(), c)?;
    let count = p.input.h as i32 * p.input.w as i32;
    for (ch, o) in output.iter_mut().enumerate() {
        let sum: i32 = input.iter().skip(ch).step_by(c.max(1)).map(|&x| x as i32).sum();
        let scaled = multiply_by_quantized_multiplier(sum - p.input_zp * count, p.multiplier, p.shift);
        *o = scaled.wrapping_add(p.output_zp).bounded(p.act_min as i32, p.act_max as i32) as i8;
    }
    Ok(())
}
