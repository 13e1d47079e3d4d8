//! A float network as plain arrays, independent of the framework it came from (burn training,
//! an ONNX file): what quantization, calibration and ONNX export read. A graph in topological
//! order: tensor 0 is the input, layer `i` writes tensor `i + 1`, and each layer names the
//! tensors it reads. Tensors are NHWC with batch 1; a dense layer reads its input flattened in
//! NHWC order.
//!
//! [`FloatNet::forward`] runs it in f64 with one fixed summation order, so calibration gives the
//! same ranges, and `lepton quantize` the same bytes, on every machine (burn's and tract's f32
//! kernels sum in an order that depends on the CPU's vector width).

use anyhow::{bail, ensure, Result};
use lepton_nn::Padding;

/// The activation fused into a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Relu6,
}

impl Act {
    fn apply(self, x: f64) -> f64 {
        match self {
            Act::None => x,
            Act::Relu => x.max(0.0),
            Act::Relu6 => x.clamp(0.0, 6.0),
        }
    }
}

/// One layer of a float network.
#[derive(Clone, Debug)]
pub struct FloatLayer {
    pub op: FloatOp,
    /// The tensors it reads (0: the network input, `k + 1`: layer `k`'s output).
    pub inputs: Vec<usize>,
    /// Name of the tensor it writes (after a fused activation), for messages.
    pub output_name: String,
}

#[derive(Clone, Debug)]
pub enum FloatOp {
    /// `groups` 1: a convolution; `groups == in_c`: depthwise (`out_c / in_c` per input channel).
    /// Weights OIHW `[out_c, in_c / groups, kh, kw]`.
    Conv { weights_oihw: Vec<f32>, bias: Vec<f32>, in_c: usize, out_c: usize, groups: usize, kernel: (usize, usize), stride: (usize, usize), padding: Padding, act: Act },
    /// Max or average pooling (average of the in-bounds taps).
    Pool { max: bool, kernel: (usize, usize), stride: (usize, usize), padding: Padding },
    /// Zero padding of height and width: top, bottom, left, right.
    Pad { pads: [usize; 4] },
    /// Element-wise sum of two tensors of one shape.
    Add { act: Act },
    /// Flatten to a vector (NHWC order: a no-op on the buffer).
    Flatten,
    Dense { weights_out_in: Vec<f32>, bias: Vec<f32>, inputs: usize, outputs: usize, act: Act },
    Softmax,
}

/// A graph of float layers over an input of `input` = (height, width, channels).
#[derive(Clone, Debug)]
pub struct FloatNet {
    pub input: (usize, usize, usize),
    pub layers: Vec<FloatLayer>,
}

/// An NHWC tensor in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Activation {
    pub shape: (usize, usize, usize),
    pub values: Vec<f64>,
}

impl FloatNet {
    /// A chain: each layer reads the previous one's output.
    pub fn chain(input: (usize, usize, usize), layers: Vec<(&str, FloatOp)>) -> FloatNet {
        let layers = layers.into_iter().enumerate().map(|(i, (name, op))| FloatLayer { op, inputs: vec![i], output_name: name.to_string() }).collect();
        FloatNet { input, layers }
    }

    /// The shape of every tensor (index 0: the input), checking that the layers fit together.
    pub fn shapes(&self) -> Result<Vec<(usize, usize, usize)>> {
        let mut shapes = vec![self.input];
        for (i, layer) in self.layers.iter().enumerate() {
            let inputs = layer
                .inputs
                .iter()
                .map(|&t| shapes.get(t).copied().filter(|_| t <= i).ok_or_else(|| anyhow::anyhow!("layer {i} ({}) reads tensor {t}, which no earlier layer writes", layer.output_name)))
                .collect::<Result<Vec<_>>>()?;
            let shape = output_shape(&layer.op, &inputs).map_err(|e| anyhow::anyhow!("layer {i} ({}): {e}", layer.output_name))?;
            shapes.push(shape);
        }
        Ok(shapes)
    }

    /// Every tensor for one input (`input` in NHWC order): index 0 the input, then each layer's output.
    pub fn forward(&self, input: &[f64]) -> Result<Vec<Activation>> {
        self.forward_with(input, |_, _| {})
    }

    /// [`forward`](Self::forward), letting `visit(t, tensor)` change each tensor `t` (0: the
    /// input) before later layers read it: to simulate quantization, say.
    pub fn forward_with(&self, input: &[f64], mut visit: impl FnMut(usize, &mut Activation)) -> Result<Vec<Activation>> {
        let (h, w, c) = self.input;
        ensure!(input.len() == h * w * c, "input has {} values, the network takes {h}x{w}x{c}", input.len());
        let mut tensors = vec![Activation { shape: self.input, values: input.to_vec() }];
        visit(0, &mut tensors[0]);
        for (i, layer) in self.layers.iter().enumerate() {
            let inputs: Vec<&Activation> = layer.inputs.iter().map(|&t| &tensors[t]).collect();
            let mut out = apply(&layer.op, &inputs)?;
            visit(i + 1, &mut out);
            tensors.push(out);
        }
        Ok(tensors)
    }
}

fn window_size(padding: Padding, n: usize, k: usize, s: usize) -> Result<usize> {
    match padding.output_size(n, k, s) {
        Some(o) if o > 0 => Ok(o),
        _ => bail!("window {k} with stride {s} does not fit an input of {n}"),
    }
}

fn output_shape(op: &FloatOp, inputs: &[(usize, usize, usize)]) -> Result<(usize, usize, usize)> {
    let arity = if matches!(op, FloatOp::Add { .. }) { 2 } else { 1 };
    ensure!(inputs.len() == arity, "{} inputs, expected {arity}", inputs.len());
    let (h, w, c) = inputs[0];
    Ok(match op {
        FloatOp::Conv { in_c, out_c, groups, kernel, stride, padding, weights_oihw, bias, .. } => {
            ensure!(*in_c == c, "expects {in_c} input channels, the tensor has {c}");
            ensure!(*groups == 1 || (*groups == *in_c && out_c % in_c == 0), "groups {groups} is neither 1 nor depthwise");
            ensure!(weights_oihw.len() == out_c * (in_c / groups) * kernel.0 * kernel.1 && bias.len() == *out_c, "weights or bias of the wrong size");
            (window_size(*padding, h, kernel.0, stride.0)?, window_size(*padding, w, kernel.1, stride.1)?, *out_c)
        }
        FloatOp::Pool { kernel, stride, padding, .. } => (window_size(*padding, h, kernel.0, stride.0)?, window_size(*padding, w, kernel.1, stride.1)?, c),
        FloatOp::Pad { pads } => (h + pads[0] + pads[1], w + pads[2] + pads[3], c),
        FloatOp::Add { .. } => {
            ensure!(inputs[1] == inputs[0], "adds tensors of shapes {:?} and {:?}", inputs[0], inputs[1]);
            inputs[0]
        }
        FloatOp::Flatten => (1, 1, h * w * c),
        FloatOp::Dense { inputs, outputs, weights_out_in, bias, .. } => {
            ensure!(*inputs == h * w * c, "expects {inputs} inputs, the tensor has {}", h * w * c);
            ensure!(weights_out_in.len() == inputs * outputs && bias.len() == *outputs, "weights or bias of the wrong size");
            (1, 1, *outputs)
        }
        FloatOp::Softmax => (h, w, c),
    })
}

fn apply(op: &FloatOp, inputs: &[&Activation]) -> Result<Activation> {
    let shapes: Vec<_> = inputs.iter().map(|a| a.shape).collect();
    let shape = output_shape(op, &shapes)?;
    let x = inputs[0];
    let (ih, iw, ic) = x.shape;
    let (oh, ow, oc) = shape;
    let mut values = vec![0.0f64; oh * ow * oc];
    match op {
        FloatOp::Conv { weights_oihw, bias, groups, kernel: (kh, kw), stride: (sh, sw), padding, act, .. } => {
            let (top, left) = (padding.leading(ih, *kh, *sh, oh), padding.leading(iw, *kw, *sw, ow));
            let per_group_in = ic / groups;
            let per_group_out = oc / groups;
            for oy in 0..oh {
                for ox in 0..ow {
                    for o in 0..oc {
                        let g = o / per_group_out;
                        let mut acc = bias[o] as f64;
                        for ky in 0..*kh {
                            let Some(iy) = (oy * sh + ky).checked_sub(top).filter(|&y| y < ih) else { continue };
                            for kx in 0..*kw {
                                let Some(ix) = (ox * sw + kx).checked_sub(left).filter(|&x| x < iw) else { continue };
                                for i in 0..per_group_in {
                                    let w = weights_oihw[((o * per_group_in + i) * kh + ky) * kw + kx] as f64;
                                    acc += w * x.values[(iy * iw + ix) * ic + g * per_group_in + i];
                                }
                            }
                        }
                        values[(oy * ow + ox) * oc + o] = act.apply(acc);
                    }
                }
            }
        }
        FloatOp::Pool { max, kernel: (kh, kw), stride: (sh, sw), padding } => {
            let (top, left) = (padding.leading(ih, *kh, *sh, oh), padding.leading(iw, *kw, *sw, ow));
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..oc {
                        let taps: Vec<f64> = (0..kh * kw)
                            .filter_map(|k| {
                                let iy = (oy * sh + k / kw).checked_sub(top).filter(|&y| y < ih)?;
                                let ix = (ox * sw + k % kw).checked_sub(left).filter(|&x| x < iw)?;
                                Some(x.values[(iy * iw + ix) * ic + ch])
                            })
                            .collect();
                        values[(oy * ow + ox) * oc + ch] =
                            if *max { taps.iter().copied().fold(f64::NEG_INFINITY, f64::max) } else { taps.iter().sum::<f64>() / taps.len().max(1) as f64 };
                    }
                }
            }
        }
        FloatOp::Pad { pads } => {
            for y in 0..ih {
                for xx in 0..iw {
                    let to = ((y + pads[0]) * ow + xx + pads[2]) * oc;
                    values[to..to + oc].copy_from_slice(&x.values[(y * iw + xx) * ic..][..ic]);
                }
            }
        }
        FloatOp::Add { act } => {
            for ((v, a), b) in values.iter_mut().zip(&x.values).zip(&inputs[1].values) {
                *v = act.apply(a + b);
            }
        }
        FloatOp::Flatten => values.copy_from_slice(&x.values),
        FloatOp::Dense { weights_out_in, bias, inputs: n, act, .. } => {
            for (o, v) in values.iter_mut().enumerate() {
                let row = &weights_out_in[o * n..(o + 1) * n];
                let acc = row.iter().zip(&x.values).fold(bias[o] as f64, |acc, (&w, &x)| acc + w as f64 * x);
                *v = act.apply(acc);
            }
        }
        FloatOp::Softmax => {
            for (row, out) in x.values.chunks(oc).zip(values.chunks_mut(oc)) {
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
                for (o, v) in out.iter_mut().zip(row) {
                    *o = (v - max).exp() / sum;
                }
            }
        }
    }
    Ok(Activation { shape, values })
}

/// Dense weights `[out][c*h*w]` that read an NCHW-flattened input, re-indexed to read the
/// NHWC-flattened one.
pub fn nchw_columns_to_nhwc(w: &[f32], outputs: usize, (c, h, wd): (usize, usize, usize)) -> Vec<f32> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(weights: Vec<f32>, in_c: usize, out_c: usize, groups: usize, kernel: (usize, usize), padding: Padding) -> FloatOp {
        FloatOp::Conv { weights_oihw: weights, bias: vec![0.5; out_c], in_c, out_c, groups, kernel, stride: (1, 1), padding, act: Act::Relu }
    }

    #[test]
    fn a_conv_sums_its_taps_and_a_pool_takes_the_max() {
        // 2x2x1 input, one 2x2 kernel of ones, bias 0.5: one output, the sum + bias.
        let net = FloatNet::chain((2, 2, 1), vec![("c", conv(vec![1.0; 4], 1, 1, 1, (2, 2), Padding::Valid))]);
        let out = net.forward(&[0.1, 0.2, 0.3, 0.4]).unwrap();
        assert!((out[1].values[0] - 1.5).abs() < 1e-12);
        let pool = FloatNet::chain((2, 2, 1), vec![("p", FloatOp::Pool { max: true, kernel: (2, 2), stride: (2, 2), padding: Padding::Valid })]);
        assert_eq!(pool.forward(&[0.1, 0.7, 0.3, 0.4]).unwrap()[1].values, [0.7]);
    }

    #[test]
    fn depthwise_convs_keep_channels_apart_and_adds_join_branches() {
        // Two channels, a 1x1 depthwise kernel of (2, 3): each channel scaled by its own weight.
        let net = FloatNet {
            input: (1, 1, 2),
            layers: vec![
                FloatLayer { op: conv(vec![2.0, 3.0], 2, 2, 2, (1, 1), Padding::Same), inputs: vec![0], output_name: "dw".into() },
                FloatLayer { op: FloatOp::Add { act: Act::Relu6 }, inputs: vec![1, 0], output_name: "add".into() },
            ],
        };
        let out = net.forward(&[1.0, 2.0]).unwrap();
        assert_eq!(out[1].values, [2.5, 6.5]);
        assert_eq!(out[2].values, [3.5, 6.0]); // 2.5 + 1, 6.5 + 2 clamped to 6
    }

    #[test]
    fn nchw_columns_are_permuted_to_nhwc() {
        // One output reading c=2, h=1, w=2: NCHW order (c0x0, c0x1, c1x0, c1x1) -> NHWC (x0c0, x0c1, x1c0, x1c1).
        assert_eq!(nchw_columns_to_nhwc(&[1.0, 2.0, 3.0, 4.0], 1, (2, 1, 2)), [1.0, 3.0, 2.0, 4.0]);
    }
}
