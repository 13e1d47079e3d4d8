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

/// A float layer to quantize (weights as exported by burn or read from ONNX).
#[derive(Clone, Debug)]
pub struct FloatLayer {
    pub op: FloatOp,
    /// Name of the tensor this layer produces (after a fused ReLU), for calibration.
    pub output_name: String,
}

#[derive(Clone, Debug)]
pub enum FloatOp {
    Conv { weights_oihw: Vec<f32>, bias: Vec<f32>, in_c: usize, out_c: usize, kernel: (usize, usize), stride: (usize, usize), padding: Padding, relu: bool },
    Pool { max: bool, kernel: (usize, usize), stride: (usize, usize) },
    /// Flatten to a vector. `chw = Some((c, h, w))` when the source flattened in NCHW order: the
    /// next dense layer's inputs are then permuted to the engine's NHWC order.
    Flatten { chw: Option<(usize, usize, usize)> },
    Dense { weights_out_in: Vec<f32>, bias: Vec<f32>, inputs: usize, outputs: usize, relu: bool },
    Softmax,
}

fn window(kernel: (usize, usize), stride: (usize, usize), padding: Padding) -> Result<Window> {
    let b = |x: usize| u8::try_from(x).map_err(|_| anyhow::anyhow!("kernel or stride {x} larger than 255"));
    Ok(Window { kernel_h: b(kernel.0)?, kernel_w: b(kernel.1)?, stride_h: b(stride.0)?, stride_w: b(stride.1)?, padding })
}

fn relu(on: bool) -> Activation {
    if on {
        Activation::Relu
    } else {
        Activation::None
    }
}

/// Quantize a sequence of float layers on a 28x28x1 input in [0, 1]. `ranges` holds the
/// calibrated `(min, max)` of every conv and dense output, in order. Pools and reshapes keep
/// their input's parameters (as TFLite does); a softmax outputs scale 1/256, zero point -128.
pub fn quantize_sequence(layers: &[FloatLayer], ranges: &[(f32, f32)]) -> Result<QModel> {
    let input = QParams { scale: 1.0 / 255.0, zero_point: -128 };
    let (mut shape, mut q) = (Shape::new(28, 28, 1), input);
    let mut ranges = ranges.iter();
    let mut permute: Option<(usize, usize, usize)> = None;
    let mut out = Vec::new();
    let dim = |x: usize| u16::try_from(x).map_err(|_| anyhow::anyhow!("dimension {x} too large"));
    for layer in layers {
        let (op, next_shape, next_q) = match &layer.op {
            FloatOp::Conv { weights_oihw, bias, in_c, out_c, kernel, stride, padding, relu: r } => {
                ensure!(*in_c == shape.c as usize, "conv expects {in_c} channels, got {}", shape.c);
                let w = oihw_to_ohwi(weights_oihw, *out_c, *in_c, kernel.0, kernel.1);
                let &(lo, hi) = ranges.next().ok_or_else(|| anyhow::anyhow!("missing calibration range"))?;
                let oq = activation_qparams(lo, hi);
                let oh = padding.output_size(shape.h as usize, kernel.0, stride.0).ok_or_else(|| anyhow::anyhow!("conv kernel larger than input"))?;
                let ow = padding.output_size(shape.w as usize, kernel.1, stride.1).ok_or_else(|| anyhow::anyhow!("conv kernel larger than input"))?;
                let op = QOp::Conv2d { window: window(*kernel, *stride, *padding)?, weights: quantize_channels(&w, *out_c, bias, q.scale), activation: relu(*r) };
                (op, Shape::new(dim(oh)?, dim(ow)?, dim(*out_c)?), oq)
            }
            FloatOp::Pool { max, kernel, stride } => {
                let w = window(*kernel, *stride, Padding::Valid)?;
                let oh = Padding::Valid.output_size(shape.h as usize, kernel.0, stride.0).ok_or_else(|| anyhow::anyhow!("pool larger than input"))?;
                let ow = Padding::Valid.output_size(shape.w as usize, kernel.1, stride.1).ok_or_else(|| anyhow::anyhow!("pool larger than input"))?;
                let op = if *max { QOp::MaxPool2d { window: w, activation: Activation::None } } else { QOp::AvgPool2d { window: w, activation: Activation::None } };
                (op, Shape::new(dim(oh)?, dim(ow)?, shape.c), q)
            }
            FloatOp::Flatten { chw } => {
                permute = *chw;
                (QOp::Reshape, Shape::new(1, 1, dim(shape.len()?)?), q)
            }
            FloatOp::Dense { weights_out_in, bias, inputs, outputs, relu: r } => {
                ensure!(*inputs == shape.len()?, "dense expects {inputs} inputs, got {}", shape.len()?);
                let w = match permute.take() {
                    Some((c, h, wd)) => nchw_columns_to_nhwc(weights_out_in, *outputs, c, h, wd),
                    None => weights_out_in.clone(),
                };
                let &(lo, hi) = ranges.next().ok_or_else(|| anyhow::anyhow!("missing calibration range"))?;
                let op = QOp::FullyConnected { weights: quantize_channels(&w, *outputs, bias, q.scale), activation: relu(*r) };
                (op, Shape::new(1, 1, dim(*outputs)?), activation_qparams(lo, hi))
            }
            FloatOp::Softmax => (QOp::Softmax { beta: 1.0 }, shape, QParams { scale: 1.0 / 256.0, zero_point: -128 }),
        };
        out.push(QLayer { op, output_shape: next_shape, output: next_q });
        (shape, q) = (next_shape, next_q);
    }
    Ok(QModel { input_shape: Shape::new(28, 28, 1), input, layers: out })
}

/// Dense weights `[out][c*h*w]` reading an NCHW-flattened input, re-indexed to read an
/// NHWC-flattened one.
fn nchw_columns_to_nhwc(w: &[f32], outputs: usize, c: usize, h: usize, wd: usize) -> Vec<f32> {
    let inputs = c * h * wd;
    let mut out = vec![0.0; w.len()];
    for o in 0..outputs {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..wd {
                    out[o * inputs + (y * wd + x) * c + ch] = w[o * inputs + (ch * h + y) * wd + x];
                }
            }
        }
    }
    out
}

/// The seed CNN as a layer sequence (burn flattens in NHWC order, like Keras).
pub fn cnn_layers(cnn: &FloatCnn) -> Vec<FloatLayer> {
    let mut layers = Vec::new();
    for (i, c) in cnn.convs.iter().enumerate() {
        layers.push(FloatLayer {
            op: FloatOp::Conv {
                weights_oihw: c.weights_oihw.clone(),
                bias: c.bias.clone(),
                in_c: c.in_c,
                out_c: c.out_c,
                kernel: (c.kernel, c.kernel),
                stride: (1, 1),
                padding: Padding::Valid,
                relu: true,
            },
            output_name: format!("relu{}", i + 1),
        });
        if i < 2 {
            layers.push(FloatLayer { op: FloatOp::Pool { max: true, kernel: (2, 2), stride: (2, 2) }, output_name: format!("pool{}", i + 1) });
        }
    }
    layers.push(FloatLayer { op: FloatOp::Flatten { chw: None }, output_name: "flat".into() });
    for (i, d) in cnn.dense.iter().enumerate() {
        let relu = i + 1 < cnn.dense.len();
        layers.push(FloatLayer {
            op: FloatOp::Dense { weights_out_in: d.weights_out_in.clone(), bias: d.bias.clone(), inputs: d.inputs, outputs: d.outputs, relu },
            output_name: format!("fc{}", i + 1),
        });
    }
    layers.push(FloatLayer { op: FloatOp::Softmax, output_name: "softmax".into() });
    layers
}

/// Quantize the seed CNN given its 7 calibrated activation ranges (conv1, pool1, conv2, pool2,
/// conv3, fc1, logits; see `float::calibrate`). The model ends with a softmax (beta 1) so the
/// device can report a confidence. Pools share their conv's parameters, so the pool ranges only
/// confirm them.
pub fn quantize_cnn(cnn: &FloatCnn, ranges: &[(f32, f32)]) -> Result<QModel> {
    ensure!(cnn.convs.len() == 3 && cnn.dense.len() == 2 && ranges.len() == 7, "not the seed CNN");
    quantize_sequence(&cnn_layers(cnn), &[ranges[0], ranges[2], ranges[4], ranges[5], ranges[6]])
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
