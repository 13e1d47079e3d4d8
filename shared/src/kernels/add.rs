//! Element-wise addition of two int8 tensors of one shape (TFLM's int8 ADD): both inputs are
//! moved to a common scale with `left_shift` bits of headroom, added, and requantized.

use crate::fixedpoint::multiply_by_quantized_multiplier;
use crate::types::expect_len;
use crate::types::Bounded;
use crate::Error;

#[derive(Clone, Copy, Debug)]
pub struct Add {
    /// Elements of each input and of the output.
    pub len: usize,
    pub input1_zp: i32,
    pub input2_zp: i32,
    pub output_zp: i32,
    /// Headroom bits (TFLM: 20 for int8).
    pub left_shift: i32,
    pub input1_multiplier: i32,
    pub input1_shift: i32,
    pub input2_multiplier: i32,
    pub input2_shift: i32,
    pub output_multiplier: i32,
    pub output_shift: i32,
    pub act_min: i8,
    pub act_max: i8,
}

pub fn add_s8_scratch_bytes(_p: &Add) -> usize {
    0
}

/// One output element from one element of each input.
#[inline(always)]
pub fn add_element(p: &Add, a: i8, b: i8) -> i8 {
    let a = (a as i32 - p.input1_zp) << p.left_shift;
    let b = (b as i32 - p.input2_zp) << p.left_shift;
    let a = multiply_by_quantized_multiplier(a, p.input1_multiplier, p.input1_shift);
    let b = multiply_by_quantized_multiplier(b, p.input2_multiplier, p.input2_shift);
    let sum = multiply_by_quantized_multiplier(a.wrapping_add(b), p.output_multiplier, p.output_shift).wrapping_add(p.output_zp);
    sum.bounded(p.act_min as i32, p.act_max as i32) as i8
}

pub fn add_s8(p: &Add, input1: &[i8], input2: &[i8], output: &mut [i8], _scratch: &mut [u8]) -> Result<(), Error> {
    expect_len(input1.len(), p.len)?;
    expect_len(input2.len(), p.len)?;
    expect_len(output.len(), p.len)?;
    for ((o, &a), &b) in output.iter_mut().zip(input1).zip(input2) {
        *o = add_element(p, a, b);
    }
    Ok(())
}
