//! Int8 softmax with gemmlowp fixed-point arithmetic (TFLM's `reference_ops::Softmax`), over the
//! channel axis. Output scale 1/256, zero point -128.

use crate::fixedpoint::{
    exp_on_negative_values_q5_26, get_reciprocal, multiply_by_quantized_multiplier, rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
};
use crate::types::expect_len;
use crate::types::Bounded;
use crate::Error;

/// Integer bits of the accumulated sum of exponentials (Q12.19).
const ACCUMULATION_INTEGER_BITS: i32 = 12;

#[derive(Clone, Copy, Debug)]
pub struct Softmax {
    /// Number of rows (all non-channel positions).
    pub rows: usize,
    /// Channels per row.
    pub depth: usize,
    /// `QuantizeMultiplierGreaterThanOne(beta * input_scale * 2^26)`.
    pub input_multiplier: i32,
    pub input_left_shift: i32,
    /// Differences from the row maximum below this contribute exactly 0.
    pub diff_min: i32,
}

pub fn softmax_s8_scratch_bytes(_p: &Softmax) -> usize {
    0
}

pub fn softmax_s8(p: &Softmax, input: &[i8], output: &mut [i8], _scratch: &mut [u8]) -> Result<(), Error> {
    let len = p.rows.checked_mul(p.depth).ok_or(Error::SizeOverflow)?;
    expect_len(input.len(), len)?;
    expect_len(output.len(), len)?;
    if p.depth == 0 {
        return Ok(());
    }
    for (row, out) in input.chunks_exact(p.depth).zip(output.chunks_exact_mut(p.depth)) {
        softmax_row(p, row, out);
    }
    Ok(())
}

fn softmax_row(p: &Softmax, row: &[i8], out: &mut [i8]) {
    let max = row.iter().copied().max().unwrap_or(i8::MIN) as i32;
    let exp_of = |x: i8| -> Option<i32> {
        let diff = x as i32 - max;
        (diff >= p.diff_min).then(|| {
            let scaled = multiply_by_quantized_multiplier(diff, p.input_multiplier, p.input_left_shift);
            exp_on_negative_values_q5_26(scaled)
        })
    };

    let mut sum_of_exps = 0i32;
    for &x in row {
        if let Some(e) = exp_of(x) {
            sum_of_exps = sum_of_exps.wrapping_add(rounding_divide_by_pot(e, ACCUMULATION_INTEGER_BITS));
        }
    }
    if sum_of_exps <= 0 {
        // Only reachable with parameters the parser rejects; keep the kernel total anyway.
        crate::dsp::fill_bytes(out, i8::MIN);
        return;
    }
    let (reciprocal, num_bits_over_unit) = get_reciprocal(sum_of_exps, ACCUMULATION_INTEGER_BITS);
    for (o, &x) in out.iter_mut().zip(row) {
        *o = match exp_of(x) {
            Some(e) => {
                let unsat = rounding_divide_by_pot(
                    saturating_rounding_doubling_high_mul(reciprocal, e),
                    num_bits_over_unit + 31 - 8,
                );
                unsat.wrapping_add(i8::MIN as i32).bounded(i8::MIN as i32, i8::MAX as i32) as i8
            }
            None => i8::MIN,
        };
    }
}
