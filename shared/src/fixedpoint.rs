//! gemmlowp / TensorFlow Lite Micro fixed-point primitives, bit for bit.
//!
//! Every function here mirrors the C++ of `gemmlowp/fixedpoint/fixedpoint.h` and
//! `tensorflow/lite/kernels/internal/common.h` with int32 semantics, written so that it cannot
//! panic for any input (wrapping where C++ would be undefined behaviour).

use crate::types::Bounded;

// On the M4 the three helpers below are out of line: ADD, MEAN, SOFTMAX and the reference
// kernels inline them a dozen times, ~640 B of inference code together, on paths the MLPerf
// Tiny models and the seed CNN run for a few hundred elements at most. [`requantize`] (every
// general requantization, [`crate::types::Requant::apply`]'s one copy) keeps its own inline
// copy of the arithmetic, and the host keeps everything inline (its reference engine runs it
// per output over the test sets).

/// `SaturatingRoundingDoublingHighMul`: the high 32 bits of `2*a*b`, rounded (ties toward +inf
/// in effect), saturating the single overflow case `a == b == i32::MIN`.
#[cfg_attr(target_arch = "arm", inline(never))]
#[cfg_attr(not(target_arch = "arm"), inline(always))]
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    srdhm(a, b)
}

#[inline(always)]
fn srdhm(a: i32, b: i32) -> i32 {
    if a == b && a == i32::MIN {
        return i32::MAX;
    }
    // gemmlowp computes `(ab + nudge) / 2^31` with C's truncating division and a sign-dependent
    // nudge (2^30, or 1 - 2^30 for negative products). Writing ab = q*2^31 + r (0 <= r < 2^31),
    // both branches equal q + [r >= 2^30], i.e. floor((ab + 2^30) / 2^31): one add and an
    // arithmetic shift (SMULL, ADDS, ADC, two shifts on the M4) instead of a 64-bit division.
    ((a as i64 * b as i64 + (1 << 30)) >> 31) as i32
}

/// `RoundingDivideByPOT`: `x / 2^exponent` rounded to nearest, ties away from zero.
/// `exponent` is clamped to 0..=31 (callers validate it; the clamp only keeps this total).
#[cfg_attr(target_arch = "arm", inline(never))]
#[cfg_attr(not(target_arch = "arm"), inline(always))]
pub fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    rdbpot(x, exponent)
}

#[inline(always)]
fn rdbpot(x: i32, exponent: i32) -> i32 {
    let exponent = exponent.bounded(0, 31) as u32;
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

/// `SaturatingRoundingMultiplyByPOT<exponent>` for int32.
#[inline(always)]
pub fn saturating_rounding_multiply_by_pot(x: i32, exponent: i32) -> i32 {
    if exponent > 0 {
        let exponent = exponent.min(31);
        let threshold = ((1i64 << (31 - exponent)) - 1) as i32;
        if x > threshold {
            i32::MAX
        } else if x < -threshold {
            i32::MIN
        } else {
            x.wrapping_shl(exponent as u32)
        }
    } else if exponent < 0 {
        rounding_divide_by_pot(x, -exponent)
    } else {
        x
    }
}

/// `MultiplyByQuantizedMultiplier(acc, M, shift)` as in TFLM's `common.h` (double rounding).
/// A positive `shift` is a left shift before the multiplication.
#[cfg_attr(target_arch = "arm", inline(never))]
#[cfg_attr(not(target_arch = "arm"), inline(always))]
pub fn multiply_by_quantized_multiplier(x: i32, multiplier: i32, shift: i32) -> i32 {
    mbqm(x, multiplier, shift)
}

#[inline(always)]
fn mbqm(x: i32, multiplier: i32, shift: i32) -> i32 {
    let left_shift = if shift > 0 { shift.min(31) } else { 0 };
    let right_shift = if shift > 0 { 0 } else { shift.saturating_neg() };
    rdbpot(srdhm(x.wrapping_mul(1i32.wrapping_shl(left_shift as u32)), multiplier), right_shift)
}

/// Requantize an int32 accumulator to int8: multiply, add the output zero point, clamp.
#[inline(always)]
pub fn requantize(acc: i32, multiplier: i32, shift: i32, output_zp: i32, act_min: i8, act_max: i8) -> i8 {
    let scaled = mbqm(acc, multiplier, shift).wrapping_add(output_zp);
    scaled.bounded(act_min as i32, act_max as i32) as i8
}

/// A gemmlowp `FixedPoint<int32, INTEGER_BITS>` value, by its raw representation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fixed<const INTEGER_BITS: i32>(i32);

impl<const I: i32> Fixed<I> {
    const FRACTIONAL_BITS: i32 = 31 - I;

    fn one() -> Self {
        if I == 0 {
            Fixed(i32::MAX)
        } else {
            Fixed(1i32.wrapping_shl(Self::FRACTIONAL_BITS as u32))
        }
    }

    /// `ConstantPOT<E>`: 2^E in this format.
    fn constant_pot(exponent: i32) -> Self {
        Fixed(1i32.wrapping_shl((Self::FRACTIONAL_BITS + exponent) as u32))
    }

    fn add(self, other: Self) -> Self {
        Fixed(self.0.wrapping_add(other.0))
    }

    fn sub(self, other: Self) -> Self {
        Fixed(self.0.wrapping_sub(other.0))
    }

    /// `Rescale<D>`: the same value with `D` integer bits.
    fn rescale<const D: i32>(self) -> Fixed<D> {
        Fixed(saturating_rounding_multiply_by_pot(self.0, I - D))
    }
}

/// Product of two fixed-point values; the result has the sum of their integer bits.
fn mul<const A: i32, const B: i32, const R: i32>(a: Fixed<A>, b: Fixed<B>) -> Fixed<R> {
    debug_assert!(R == A + B);
    Fixed(saturating_rounding_doubling_high_mul(a.0, b.0))
}

/// gemmlowp's `exp_on_interval_between_negative_one_quarter_and_0_excl`.
fn exp_on_interval_between_negative_one_quarter_and_0_excl(a: Fixed<0>) -> Fixed<0> {
    let constant_term = Fixed::<0>(1_895_147_668); // exp(-1/8)
    let constant_1_over_3 = Fixed::<0>(715_827_883);
    let x = a.add(Fixed::<0>::constant_pot(-3));
    let x2: Fixed<0> = mul(x, x);
    let x3: Fixed<0> = mul(x2, x);
    let x4: Fixed<0> = mul(x2, x2);
    let x4_over_4 = Fixed::<0>(saturating_rounding_multiply_by_pot(x4.0, -2));
    let inner: Fixed<0> = mul(x4_over_4.add(x3), constant_1_over_3);
    let poly = Fixed::<0>(saturating_rounding_multiply_by_pot(inner.add(x2).0, -1));
    constant_term.add(mul(constant_term, x.add(poly)))
}

/// gemmlowp's `exp_on_negative_values` for a Q5.26 input (5 integer bits), result in Q0.31.
pub fn exp_on_negative_values_q5_26(raw: i32) -> i32 {
    const INTEGER_BITS: i32 = 5;
    const FRACTIONAL_BITS: i32 = 31 - INTEGER_BITS;
    let a = Fixed::<INTEGER_BITS>(raw);
    let one_quarter = Fixed::<INTEGER_BITS>::constant_pot(-2);
    let mask = Fixed::<INTEGER_BITS>(one_quarter.0.wrapping_sub(1));
    let a_mod_quarter_minus_one_quarter = Fixed::<INTEGER_BITS>(a.0 & mask.0).sub(one_quarter);
    let mut result = exp_on_interval_between_negative_one_quarter_and_0_excl(a_mod_quarter_minus_one_quarter.rescale::<0>());
    let remainder = a_mod_quarter_minus_one_quarter.sub(a).0;

    // Barrel shifter: multiply by exp(-2^k) for each whole power of two in the remainder.
    const BARREL: [(i32, i32); 7] = [
        (-2, 1_672_461_947),
        (-1, 1_302_514_674),
        (0, 790_015_084),
        (1, 290_630_308),
        (2, 39_332_535),
        (3, 720_401),
        (4, 242),
    ];
    for (exponent, multiplier) in BARREL {
        if INTEGER_BITS > exponent {
            let bit = 1i32 << (FRACTIONAL_BITS + exponent);
            if remainder & bit != 0 {
                result = mul(result, Fixed::<0>(multiplier));
            }
        }
    }
    if raw == 0 {
        result = Fixed::<0>::one();
    }
    result.0
}

/// gemmlowp's `one_over_one_plus_x_for_x_in_0_1`, Q0.31 in and out.
pub fn one_over_one_plus_x_for_x_in_0_1(raw: i32) -> i32 {
    let a = Fixed::<0>(raw);
    let half_denominator = Fixed::<0>(rounding_half_sum(a.0, Fixed::<0>::one().0));
    let constant_48_over_17 = Fixed::<2>(1_515_870_810);
    let constant_neg_32_over_17 = Fixed::<2>(-1_010_580_540);
    let mut x = constant_48_over_17.add(mul(half_denominator, constant_neg_32_over_17));
    for _ in 0..3 {
        let half_denominator_times_x: Fixed<2> = mul(half_denominator, x);
        let one_minus_half_denominator_times_x = Fixed::<2>::one().sub(half_denominator_times_x);
        let correction: Fixed<4> = mul(x, one_minus_half_denominator_times_x);
        x = x.add(correction.rescale::<2>());
    }
    // ExactMulByPot<-1>: same raw bits, one integer bit fewer.
    Fixed::<1>(x.0).rescale::<0>().0
}

/// gemmlowp's `RoundingHalfSum` for int32.
fn rounding_half_sum(a: i32, b: i32) -> i32 {
    let sum = a as i64 + b as i64;
    let sign = if sum >= 0 { 1 } else { -1 };
    // C's truncating `/ 2` as a shift (LLVM calls __aeabi_ldivmod for an i64 `/ 2` at
    // opt-level "s": 1 KB of the inference code).
    let t = sum + sign;
    ((t + ((t >> 63) & 1)) >> 1) as i32
}

/// TFLM's `GetReciprocal`: `1 / x` for an accumulator with `integer_bits` integer bits.
/// Returns the Q0.31 reciprocal of the normalised value and the number of bits over unit.
pub fn get_reciprocal(x: i32, integer_bits: i32) -> (i32, i32) {
    let headroom_plus_one = (x as u32).leading_zeros() as i32;
    let num_bits_over_unit = integer_bits - headroom_plus_one;
    let shifted = (x as u32).wrapping_shl(headroom_plus_one as u32).wrapping_sub(1 << 31) as i32;
    (one_over_one_plus_x_for_x_in_0_1(shifted), num_bits_over_unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shift form of `RoundingHalfSum` against gemmlowp's division.
    #[test]
    fn rounding_half_sum_equals_the_division_form() {
        let values = [0, 1, -1, 2, -2, 3, -3, i32::MIN, i32::MAX, i32::MIN + 1, i32::MAX - 1, 1 << 30, -(1 << 30), 12_345, -54_321];
        for &a in &values {
            for &b in &values {
                let sum = a as i64 + b as i64;
                let want = ((sum + if sum >= 0 { 1 } else { -1 }) / 2) as i32;
                assert_eq!(rounding_half_sum(a, b), want, "{a} {b}");
            }
        }
    }

    /// The shift form against gemmlowp's literal division form.
    #[test]
    fn srdhm_equals_the_gemmlowp_division_form() {
        fn gemmlowp(a: i32, b: i32) -> i32 {
            if a == b && a == i32::MIN {
                return i32::MAX;
            }
            let ab = a as i64 * b as i64;
            let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
            ((ab + nudge) / (1i64 << 31)) as i32
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let specials = [0, 1, -1, i32::MIN, i32::MAX, 1 << 30, -(1 << 30), (1 << 30) + 1, 3, -3];
        for &a in &specials {
            for &b in &specials {
                assert_eq!(saturating_rounding_doubling_high_mul(a, b), gemmlowp(a, b), "{a} {b}");
            }
        }
        for _ in 0..1_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (a, b) = (x as i32, (x >> 32) as i32);
            assert_eq!(saturating_rounding_doubling_high_mul(a, b), gemmlowp(a, b), "{a} {b}");
            let small = (a >> 12, b);
            assert_eq!(saturating_rounding_doubling_high_mul(small.0, small.1), gemmlowp(small.0, small.1));
        }
    }

    #[test]
    fn srdhm_saturates_the_only_overflow() {
        assert_eq!(saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN), i32::MAX);
        assert_eq!(saturating_rounding_doubling_high_mul(1 << 30, 1 << 30), 1 << 29);
    }

    #[test]
    fn rounding_divide_rounds_ties_away_from_zero() {
        assert_eq!(rounding_divide_by_pot(5, 1), 3);
        assert_eq!(rounding_divide_by_pot(-5, 1), -3);
        assert_eq!(rounding_divide_by_pot(4, 1), 2);
        assert_eq!(rounding_divide_by_pot(-7, 2), -2);
    }

    #[test]
    fn exp_of_zero_is_one() {
        assert_eq!(exp_on_negative_values_q5_26(0), i32::MAX);
    }

    #[test]
    fn exp_tracks_the_real_exponential() {
        for d in -31..0 {
            let raw = d * (1 << 26);
            let got = exp_on_negative_values_q5_26(raw) as f64 / 2f64.powi(31);
            let want = (d as f64).exp();
            assert!((got - want).abs() < 1e-6, "exp({d}) = {got}, want {want}");
        }
    }

    #[test]
    fn reciprocal_tracks_one_over_x() {
        // 1.5 in Q0.31 after normalisation: x = 0.5 → 1/(1+x) = 2/3.
        let got = one_over_one_plus_x_for_x_in_0_1(1 << 30) as f64 / 2f64.powi(31);
        assert!((got - 2.0 / 3.0).abs() < 1e-8);
    }
}
