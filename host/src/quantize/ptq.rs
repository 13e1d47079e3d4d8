//! Post-training int8 quantization of a float network, TFLite's recipe: per-output-channel symmetric
//! int8 weights, per-tensor asymmetric int8 activations from calibration ranges, int32 biases at
//! `input_scale * weight_scale`. The integer multipliers follow in the `.lpk` writer ([`crate::lpk`]).

use anyhow::{ensure, Result};
use lepton_nn::{Padding, Shape};

use crate::float_net::{Act, FloatNet, FloatOp};
use crate::lpk::{Activation, QModel, QNode, QOp, QParams, QTensor, Weights, Window};

/// TFLite's asymmetric int8 parameters for a real range (widened to include 0, zero point nudged).
pub fn activation_qparams(min: f32, max: f32) -> QParams {
    let (min, max) = (min.min(0.0), max.max(0.0));
    let scale = if max > min { (max - min) / 255.0 } else { 1.0 };
    let zero_point = (-128.0 - min / scale).round().clamp(-128.0, 127.0) as i32;
    QParams { scale, zero_point }
}

/// Weight precision: TFLite's int8, or int4 (TFLM's int4-weight semantics: the same arithmetic
/// with values in -8..=7, here symmetric in -7..=7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightBits {
    #[default]
    Eight,
    Four,
}

impl WeightBits {
    /// The largest magnitude a weight takes.
    fn max_q(self) -> f32 {
        match self {
            WeightBits::Eight => 127.0,
            WeightBits::Four => 7.0,
        }
    }
}

/// Whether a convolution's weights are stored in the int4 layout by `--weights int4` (and so
/// quantized to 4 bits): all but the one-channel kernels of at most 9 taps that are not whole
/// quads, which the `.lpk` writer keeps canonical int8 for the one-channel kernel.
pub fn int4_stored(in_c: usize, kernel_taps: usize) -> bool {
    !(in_c == 1 && kernel_taps <= 9 && !kernel_taps.is_multiple_of(4))
}

/// Symmetric per-channel int8 weights: `scale_c = max|w_c| / 127`.
fn quantize_channels(weights: &[f32], channels: usize, bias: &[f32], input_scale: f32) -> Weights {
    quantize_channels_to(weights, channels, bias, input_scale, WeightBits::Eight)
}

/// Symmetric per-channel weights of `bits`: `scale_c = max|w_c| / max_q`.
fn quantize_channels_to(weights: &[f32], channels: usize, bias: &[f32], input_scale: f32, bits: WeightBits) -> Weights {
    let max_q = bits.max_q();
    let per = weights.len() / channels;
    let mut values = Vec::with_capacity(weights.len());
    let mut scales = Vec::with_capacity(channels);
    for w in weights.chunks(per) {
        let max = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let scale = if max > 0.0 { max / max_q } else { 1.0 };
        values.extend(w.iter().map(|x| (x / scale).round().clamp(-max_q, max_q) as i8));
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

fn window(kernel: (usize, usize), stride: (usize, usize), padding: Padding) -> Result<Window> {
    let b = |x: usize| u8::try_from(x).map_err(|_| anyhow::anyhow!("kernel or stride {x} larger than 255"));
    Ok(Window { kernel_h: b(kernel.0)?, kernel_w: b(kernel.1)?, stride_h: b(stride.0)?, stride_w: b(stride.1)?, padding })
}

fn activation(act: Act) -> Activation {
    match act {
        Act::None => Activation::None,
        Act::Relu => Activation::Relu,
        Act::Relu6 => Activation::Relu6,
    }
}

fn dim(x: usize) -> Result<u16> {
    u16::try_from(x).map_err(|_| anyhow::anyhow!("dimension {x} too large"))
}

fn shape((h, w, c): (usize, usize, usize)) -> Result<Shape> {
    Ok(Shape::new(dim(h)?, dim(w)?, dim(c)?))
}

/// Depthwise weights OIHW `[out, 1, kh, kw]` as TFLite's `[kh, kw, out]`, quantized per channel.
fn depthwise_weights(weights_oihw: &[f32], out_c: usize, taps: usize, bias: &[f32], input_scale: f32) -> Weights {
    let per_channel = quantize_channels(weights_oihw, out_c, bias, input_scale);
    let mut values = vec![0i8; per_channel.values.len()];
    for o in 0..out_c {
        for t in 0..taps {
            values[t * out_c + o] = per_channel.values[o * taps + t];
        }
    }
    Weights { values, ..per_channel }
}

/// Quantize a float network. `ranges` holds the calibrated `(min, max)` of every tensor (index
/// 0: the input; an image input in [0, 1] gets scale 1/255 and zero point -128, as TFLite
/// quantizes images); conv, dense, add and global-average (MEAN) outputs take their parameters from
/// them, other pools, pads and flattens keep their input's (as TFLite does), a softmax outputs scale 1/256, zero point
/// -128.
pub fn quantize_net(net: &FloatNet, ranges: &[(f32, f32)]) -> Result<QModel> {
    quantize_net_with(net, ranges, WeightBits::Eight)
}

/// [`quantize_net`] with `bits` for the weights of the convolutions and fully connected layers
/// stored in the int4 layout ([`int4_stored`]); depthwise and small one-channel convolutions keep
/// int8.
pub fn quantize_net_with(net: &FloatNet, ranges: &[(f32, f32)], bits: WeightBits) -> Result<QModel> {
    ensure!(ranges.len() == net.layers.len() + 1, "{} calibration ranges for {} tensors", ranges.len(), net.layers.len() + 1);
    let shapes = net.shapes()?;
    let mut tensors = vec![QTensor { shape: shape(net.input)?, q: activation_qparams(ranges[0].0, ranges[0].1) }];
    let mut nodes = Vec::with_capacity(net.layers.len());
    for (i, layer) in net.layers.iter().enumerate() {
        let q = tensors[layer.inputs[0]].q;
        let range = ranges[i + 1];
        let (op, out_q) = match &layer.op {
            FloatOp::Conv { weights_oihw, bias, in_c, out_c, groups, kernel, stride, padding, act } if *groups == 1 => {
                let w = oihw_to_ohwi(weights_oihw, *out_c, *in_c, kernel.0, kernel.1);
                let bits = if int4_stored(*in_c, kernel.0 * kernel.1) { bits } else { WeightBits::Eight };
                let op = QOp::Conv2d { window: window(*kernel, *stride, *padding)?, weights: quantize_channels_to(&w, *out_c, bias, q.scale, bits), activation: activation(*act) };
                (op, activation_qparams(range.0, range.1))
            }
            FloatOp::Conv { weights_oihw, bias, in_c, out_c, kernel, stride, padding, act, .. } => {
                let depth_multiplier = u8::try_from(out_c / in_c).map_err(|_| anyhow::anyhow!("depth multiplier {} too large", out_c / in_c))?;
                let weights = depthwise_weights(weights_oihw, *out_c, kernel.0 * kernel.1, bias, q.scale);
                let op = QOp::DepthwiseConv2d { window: window(*kernel, *stride, *padding)?, depth_multiplier, weights, activation: activation(*act) };
                (op, activation_qparams(range.0, range.1))
            }
            // A global average pool becomes MEAN (as TFLite converts Keras' global pooling): its
            // output takes its own, narrower range instead of the wide input's scale.
            FloatOp::Pool { max: false, kernel, .. } if shapes[i + 1].0 == 1 && shapes[i + 1].1 == 1 && (shapes[layer.inputs[0]].0, shapes[layer.inputs[0]].1) == *kernel => {
                (QOp::Mean, activation_qparams(range.0, range.1))
            }
            FloatOp::Pool { max, kernel, stride, padding } => {
                let w = window(*kernel, *stride, *padding)?;
                let op = if *max { QOp::MaxPool2d { window: w, activation: Activation::None } } else { QOp::AvgPool2d { window: w, activation: Activation::None } };
                (op, q)
            }
            FloatOp::Pad { pads } => {
                let p = |x: usize| u16::try_from(x).map_err(|_| anyhow::anyhow!("pad {x} too large"));
                (QOp::Pad { top: p(pads[0])?, bottom: p(pads[1])?, left: p(pads[2])?, right: p(pads[3])? }, q)
            }
            FloatOp::Add { act } => (QOp::Add { activation: activation(*act) }, activation_qparams(range.0, range.1)),
            FloatOp::Flatten => (QOp::Reshape, q),
            FloatOp::Dense { weights_out_in, bias, outputs, act, .. } => {
                let op = QOp::FullyConnected { weights: quantize_channels_to(weights_out_in, *outputs, bias, q.scale, bits), activation: activation(*act) };
                (op, activation_qparams(range.0, range.1))
            }
            FloatOp::Softmax => (QOp::Softmax { beta: 1.0 }, QParams { scale: 1.0 / 256.0, zero_point: -128 }),
        };
        tensors.push(QTensor { shape: shape(shapes[i + 1])?, q: out_q });
        nodes.push(QNode { op, inputs: layer.inputs.clone(), output: i + 1 });
    }
    let output = tensors.len() - 1;
    Ok(QModel { tensors, nodes, input: 0, output })
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
