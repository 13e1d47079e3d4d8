//! Post-training int8 quantization of the seed CNN, TFLite's recipe: per-output-channel symmetric
//! int8 weights, per-tensor asymmetric int8 activations from calibration ranges, int32 biases at
//! `input_scale * weight_scale`. The integer multipliers follow in [`crate::qmodel`].

use anyhow::{ensure, Result};
use lepton_nn::{Padding, Shape};

use crate::float::export::FloatCnn;
use crate::qmodel::{QLayer, QModel, QOp, QParams, Weights, Window};
use crate::quant::Activation;

/// TFLite's asymmetric int8 parameters for a real range (widened to include 0, zero point nudged).
pub fn activation_qparams(min: f32, max: f32) -> QParams {
    let (min, max) = (min.min(0.0), max.max(0.0));
    let scale = if max > min { (max - min) / 255.0 } else { 1.0 };
    let zero_point = (-128.0 - min / scale).round().clamp(-128.0, 127.0) as i32;
    QParams { scale, zero_point }
}

/// Symmetric per-channel int8 weights: `scale_c = max|w_c| / 127`.
fn quantize_channels(weights: &[f32], channels: usize, bias: &[f32], input_scale: f32) -> Weights {
    let per = weights.len() / channels;
    let mut values = Vec::with_capacity(weights.len());
    let mut scales = Vec::with_capacity(channels);
    for w in weights.chunks(per) {
        let max = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        values.extend(w.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8));
        scales.push(scale);
    }
    let bias = bias
        .iter()
        .zip(&scales)
        .map(|(&b, &s)| (b as f64 / (input_scale as f64 * s as f64)).round().clamp(i32::MIN as f64, i32::MAX as f64) as i32)
        .collect();
    Weights { values, scales, bias }
}

/// OIHW (burn, PyTorch) to OHWI (TFLite, `lepton-nn`).
pub fn oihw_to_ohwi(w: &[f32], o: usize, i: usize, h: usize, k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(w.len());
    for oc in 0..o {
        for y in 0..h {
            for x in 0..k {
                for ic in 0..i {
                    out.push(w[((oc * i + ic) * h + y) * k + x]);
                }
            }
        }
    }
    out
}

/// Quantize the seed CNN given its 7 calibrated activation ranges (see `float::calibrate`).
/// The model ends with a softmax (beta 1) so the device can report a confidence.
pub fn quantize_cnn(cnn: &FloatCnn, ranges: &[(f32, f32)]) -> Result<QModel> {
    ensure!(cnn.convs.len() == 3 && cnn.dense.len() == 2 && ranges.len() == 7, "not the seed CNN");
    let input = QParams { scale: 1.0 / 255.0, zero_point: -128 };
    let q: Vec<QParams> = ranges.iter().map(|&(lo, hi)| activation_qparams(lo, hi)).collect();
    // Pools keep their input's parameters (TFLite does the same), so conv outputs use the range
    // seen before pooling; the pool ranges only confirm it.
    let (c1, c2, c3, h, logits) = (q[0], q[2], q[4], q[5], q[6]);
    let conv_window = Window { kernel_h: 3, kernel_w: 3, stride_h: 1, stride_w: 1, padding: Padding::Valid };
    let pool_window = Window { kernel_h: 2, kernel_w: 2, stride_h: 2, stride_w: 2, padding: Padding::Valid };
    let conv = |k: usize, in_q: QParams, out_q: QParams, out_shape: Shape| {
        let p = &cnn.convs[k];
        let w = oihw_to_ohwi(&p.weights_oihw, p.out_c, p.in_c, p.kernel, p.kernel);
        QLayer {
            op: QOp::Conv2d { window: conv_window, weights: quantize_channels(&w, p.out_c, &p.bias, in_q.scale), activation: Activation::Relu },
            output_shape: out_shape,
            output: out_q,
        }
    };
    let dense = |k: usize, in_q: QParams, out_q: QParams, activation: Activation| {
        let p = &cnn.dense[k];
        QLayer {
            op: QOp::FullyConnected { weights: quantize_channels(&p.weights_out_in, p.outputs, &p.bias, in_q.scale), activation },
            output_shape: Shape::new(1, 1, p.outputs as u16),
            output: out_q,
        }
    };
    let pool = |shape: Shape, q: QParams| QLayer { op: QOp::MaxPool2d { window: pool_window, activation: Activation::None }, output_shape: shape, output: q };
    let layers = vec![
        conv(0, input, c1, Shape::new(26, 26, 32)),
        pool(Shape::new(13, 13, 32), c1),
        conv(1, c1, c2, Shape::new(11, 11, 64)),
        pool(Shape::new(5, 5, 64), c2),
        conv(2, c2, c3, Shape::new(3, 3, 64)),
        QLayer { op: QOp::Reshape, output_shape: Shape::new(1, 1, 576), output: c3 },
        dense(0, c3, h, Activation::Relu),
        dense(1, h, logits, Activation::None),
        QLayer { op: QOp::Softmax { beta: 1.0 }, output_shape: Shape::new(1, 1, 10), output: QParams { scale: 1.0 / 256.0, zero_point: -128 } },
    ];
    Ok(QModel { input_shape: Shape::new(28, 28, 1), input, layers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_params_follow_tflite() {
        // [0, 1] -> scale 1/255, zero point -128 (the input of every MNIST model).
        assert_eq!(activation_qparams(0.0, 1.0), QParams { scale: 1.0 / 255.0, zero_point: -128 });
        // A range that excludes 0 is widened to include it.
        let q = activation_qparams(0.5, 2.0);
        assert_eq!(q.zero_point, -128);
        assert!((q.scale - 2.0 / 255.0).abs() < 1e-9);
        // Symmetric range: the real zero point -0.5 rounds half away from zero, as TfLiteRound does.
        let q = activation_qparams(-1.0, 1.0);
        assert_eq!(q.zero_point, -1);
    }

    #[test]
    fn weights_are_symmetric_per_channel() {
        let w = quantize_channels(&[0.5, -1.0, 0.25, 0.1], 2, &[0.02, 0.0], 0.5);
        assert_eq!(w.values, [64, -127, 127, 51]);
        assert_eq!(w.scales, [1.0 / 127.0, 0.25 / 127.0]);
        assert_eq!(w.bias, [(0.02f64 / (0.5 * (1.0f64 / 127.0) as f32 as f64)).round() as i32, 0]);
    }

    #[test]
    fn oihw_to_ohwi_moves_channels_last() {
        // o=1, i=2, 1x2 kernel: [i0: a b][i1: c d] -> [(a c) (b d)]
        assert_eq!(oihw_to_ohwi(&[1.0, 2.0, 3.0, 4.0], 1, 2, 1, 2), [1.0, 3.0, 2.0, 4.0]);
    }
}
