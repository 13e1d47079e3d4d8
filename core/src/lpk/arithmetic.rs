//! Host-side quantization arithmetic: TFLite's `QuantizeMultiplier` and friends, in f64.
//! The device never sees a float: it gets the integer multipliers and shifts computed here.

/// TFLite `QuantizeMultiplier`: `real = M * 2^(shift - 31)` with `M` in `[2^30, 2^31)`.
/// Returns `(M, shift)`; a positive shift is a left shift.
pub fn quantize_multiplier(real: f64) -> (i32, i32) {
    if real == 0.0 || !real.is_finite() {
        return (0, 0);
    }
    let (q, mut shift) = libm::frexp(real);
    let mut q_fixed = (q * (1i64 << 31) as f64).round() as i64; // f64::round: half away from zero, like C round()
    if q_fixed == 1i64 << 31 {
        q_fixed /= 2;
        shift += 1;
    }
    if shift < -31 {
        shift = 0;
        q_fixed = 0;
    }
    (q_fixed as i32, shift)
}

/// Effective requantization scale of a conv / fully-connected channel, exactly as TFLM computes
/// it: each float32 widened to f64, multiplied left to right.
pub fn effective_scale(input_scale: f32, weight_scale: f32, output_scale: f32) -> f64 {
    input_scale as f64 * weight_scale as f64 / output_scale as f64
}

/// Per-channel `(multipliers, shifts)` for a layer.
pub fn channel_multipliers(input_scale: f32, weight_scales: &[f32], output_scale: f32) -> (Vec<i32>, Vec<i32>) {
    weight_scales.iter().map(|&w| quantize_multiplier(effective_scale(input_scale, w, output_scale))).unzip()
}

/// Integer bits of the scaled input difference in TFLM's int8 softmax.
const SOFTMAX_SCALED_DIFF_INTEGER_BITS: i32 = 5;

/// TFLM `SoftmaxPrepare` for int8: `(input_multiplier, input_left_shift, diff_min)`.
pub fn softmax_params(beta: f32, input_scale: f32) -> (i32, i32, i32) {
    let bits = SOFTMAX_SCALED_DIFF_INTEGER_BITS;
    let real = (beta as f64 * input_scale as f64 * (1i64 << (31 - bits)) as f64).min((1i64 << 31) as f64 - 1.0);
    let (multiplier, left_shift) = quantize_multiplier(real);
    let radius = ((1i64 << bits) - 1) as f64 * (1i64 << (31 - bits)) as f64 / (1i64 << left_shift.clamp(0, 62)) as f64;
    (multiplier, left_shift, -(radius.floor() as i32))
}

/// TFLM's int8 ADD Prepare: `[left_shift, m1, s1, m2, s2, m_out, s_out]` for inputs of scales
/// `s1`, `s2` and an output of scale `so`: both inputs are brought to twice the larger scale
/// with 20 bits of headroom.
pub fn add_params(s1: f32, s2: f32, so: f32) -> [i32; 7] {
    const LEFT_SHIFT: i32 = 20;
    let twice_max = 2.0 * s1.max(s2) as f64;
    let (m1, e1) = quantize_multiplier(s1 as f64 / twice_max);
    let (m2, e2) = quantize_multiplier(s2 as f64 / twice_max);
    let (mo, eo) = quantize_multiplier(twice_max / ((1i64 << LEFT_SHIFT) as f64 * so as f64));
    [LEFT_SHIFT, m1, e1, m2, e2, mo, eo]
}

/// TFLM's int8 MEAN (`QuantizedMeanOrSum`): the multiplier and shift of `input_scale /
/// output_scale` with the division by `count` elements folded in.
pub fn mean_params(input_scale: f32, output_scale: f32, count: usize) -> (i32, i32) {
    let (m, shift) = quantize_multiplier(input_scale as f64 / output_scale as f64);
    let count = count.max(1) as i64;
    let k = (63 - count.leading_zeros() as i32).min(32).min(31 + shift).max(0);
    ((((m as i64) << k) / count) as i32, shift - k)
}

/// TFLite `CalculateActivationRangeQuantized` for int8.
pub fn activation_range(activation: Activation, scale: f32, zero_point: i32) -> (i8, i8) {
    let quantize = |x: f32| zero_point + (x / scale).round() as i32;
    let (lo, hi) = match activation {
        Activation::None => (-128, 127),
        Activation::Relu => (quantize(0.0).max(-128), 127),
        Activation::Relu6 => (quantize(0.0).max(-128), quantize(6.0).min(127)),
    };
    (lo.clamp(-128, 127) as i8, hi.clamp(-128, 127) as i8)
}

/// Fused activation of a conv or fully-connected layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Activation {
    None,
    Relu,
    Relu6,
}

/// Quantize a pixel 0..=255 as TFLite quantizes the float input `pixel / 255` (float32 math).
pub fn quantize_pixel(pixel: u8, scale: f32, zero_point: i32) -> i8 {
    let real = pixel as f32 / 255.0;
    ((real / scale).round() as i32 + zero_point).clamp(-128, 127) as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_conv0_channel6() {
        // ARITHMETIC.md §7: frexp(0.0031570818738059733) = (0.808.., -8) -> M = 1735624115.
        assert_eq!(quantize_multiplier(0.0031570818738059733), (1735624115, -8));
    }

    #[test]
    fn softmax_setup_matches_tflm() {
        // ARITHMETIC.md §6: logits scale 0.20196452736854553, beta 1.
        assert_eq!(softmax_params(1.0, 0.201_964_53), (1734862080, 24, -124));
    }

    #[test]
    fn input_quantization_is_pixel_minus_128() {
        let scale = f32::from_bits(0x3b808081);
        for p in 0..=255u8 {
            assert_eq!(quantize_pixel(p, scale, -128) as i32, p as i32 - 128);
        }
    }

    #[test]
    fn mean_folds_the_count_into_the_multiplier() {
        // The worked example of TFLM's QuantizedMeanOrSum: in 0.11, out 0.043, n = 25.
        assert_eq!(quantize_multiplier(0.11f32 as f64 / 0.043f32 as f64), (1373390651, 2));
        assert_eq!(mean_params(0.11, 0.043, 25), (878970016, -2));
    }

    #[test]
    fn add_gives_the_larger_input_the_multiplier_one_half() {
        let p = add_params(0.05, 0.1, 0.12);
        assert_eq!(p[0], 20);
        assert_eq!((p[3], p[4]), (1 << 30, 0)); // 0.1 / 0.2 = 0.5
        assert_eq!(p[2], -1); // 0.05 / 0.2 = 0.25 = 0.5 * 2^-1
    }

    #[test]
    fn relu_range_starts_at_the_zero_point() {
        assert_eq!(activation_range(Activation::Relu, 0.1, -20), (-20, 127));
        assert_eq!(activation_range(Activation::Relu6, 0.1, -128), (-128, -68));
    }
}
