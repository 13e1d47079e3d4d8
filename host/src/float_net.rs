//! A float network as plain arrays, independent of the framework it came from (burn training,
//! an ONNX file): what quantization, calibration and ONNX export read. Tensors are NHWC with
//! batch 1; a dense layer reads its input flattened in NHWC order.
//!
//! [`FloatNet::forward`] runs it in f64 with one fixed summation order, so calibration gives the
//! same ranges, and `lepton quantize` the same bytes, on every machine (burn's and tract's f32
//! kernels sum in an order that depends on the CPU's vector width).

use anyhow::{bail, ensure, Result};
use lepton_nn::Padding;

/// One layer of a float network.
#[derive(Clone, Debug)]
pub struct FloatLayer {
    pub op: FloatOp,
    /// Name of the tensor this layer produces (after a fused ReLU), for messages and tract.
    pub output_name: String,
}

#[derive(Clone, Debug)]
pub enum FloatOp {
    Conv { weights_oihw: Vec<f32>, bias: Vec<f32>, in_c: usize, out_c: usize, kernel: (usize, usize), stride: (usize, usize), padding: Padding, relu: bool },
    Pool { max: bool, kernel: (usize, usize), stride: (usize, usize) },
    /// Flatten to a vector (NHWC order: a no-op on the buffer).
    Flatten,
    Dense { weights_out_in: Vec<f32>, bias: Vec<f32>, inputs: usize, outputs: usize, relu: bool },
    Softmax,
}

/// A chain of float layers over an input of `input` = (height, width, channels) in [0, 1].
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
    /// The output shape of every layer, checking that the layers chain.
    pub fn shapes(&self) -> Result<Vec<(usize, usize, usize)>> {
        let mut shape = self.input;
        let mut out = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            shape = output_shape(&layer.op, shape).map_err(|e| anyhow::anyhow!("layer {i} ({}): {e}", layer.output_name))?;
            out.push(shape);
        }
        Ok(out)
    }

    /// Every layer's output for one input (`input` in NHWC order, values in [0, 1]).
    pub fn forward(&self, input: &[f64]) -> Result<Vec<Activation>> {
        let (h, w, c) = self.input;
        ensure!(input.len() == h * w * c, "input has {} values, the network takes {h}x{w}x{c}", input.len());
        let mut x = Activation { shape: self.input, values: input.to_vec() };
        let mut out = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            x = apply(&layer.op, &x)?;
            out.push(x.clone());
        }
        Ok(out)
    }
}

fn output_shape(op: &FloatOp, (h, w, c): (usize, usize, usize)) -> Result<(usize, usize, usize)> {
    Ok(match op {
        FloatOp::Conv { in_c, out_c, kernel, stride, padding, weights_oihw, bias, .. } => {
            ensure!(*in_c == c, "expects {in_c} input channels, the tensor has {c}");
            ensure!(weights_oihw.len() == out_c * in_c * kernel.0 * kernel.1 && bias.len() == *out_c, "weights or bias of the wrong size");
            let oh = padding.output_size(h, kernel.0, stride.0);
            let ow = padding.output_size(w, kernel.1, stride.1);
            match (oh, ow) {
                (Some(oh), Some(ow)) if oh > 0 && ow > 0 => (oh, ow, *out_c),
                _ => bail!("kernel {kernel:?} does not fit the {h}x{w} input"),
            }
        }
        FloatOp::Pool { kernel, stride, .. } => match (Padding::Valid.output_size(h, kernel.0, stride.0), Padding::Valid.output_size(w, kernel.1, stride.1)) {
            (Some(oh), Some(ow)) if oh > 0 && ow > 0 => (oh, ow, c),
            _ => bail!("pool {kernel:?} does not fit the {h}x{w} input"),
        },
        FloatOp::Flatten => (1, 1, h * w * c),
        FloatOp::Dense { inputs, outputs, weights_out_in, bias, .. } => {
            ensure!(*inputs == h * w * c, "expects {inputs} inputs, the tensor has {}", h * w * c);
            ensure!(weights_out_in.len() == inputs * outputs && bias.len() == *outputs, "weights or bias of the wrong size");
            (1, 1, *outputs)
        }
        FloatOp::Softmax => (h, w, c),
    })
}

fn relu(x: f64, on: bool) -> f64 {
    if on && x < 0.0 {
        0.0
    } else {
        x
    }
}

fn apply(op: &FloatOp, x: &Activation) -> Result<Activation> {
    let shape = output_shape(op, x.shape)?;
    let (ih, iw, ic) = x.shape;
    let (oh, ow, oc) = shape;
    let mut values = vec![0.0f64; oh * ow * oc];
    match op {
        FloatOp::Conv { weights_oihw, bias, kernel: (kh, kw), stride: (sh, sw), padding, relu: r, .. } => {
            let (top, left) = (padding.leading(ih, *kh, *sh, oh), padding.leading(iw, *kw, *sw, ow));
            for oy in 0..oh {
                for ox in 0..ow {
                    for o in 0..oc {
                        let mut acc = bias[o] as f64;
                        for ky in 0..*kh {
                            let Some(iy) = (oy * sh + ky).checked_sub(top).filter(|&y| y < ih) else { continue };
                            for kx in 0..*kw {
                                let Some(ix) = (ox * sw + kx).checked_sub(left).filter(|&x| x < iw) else { continue };
                                for i in 0..ic {
                                    acc += weights_oihw[((o * ic + i) * kh + ky) * kw + kx] as f64 * x.values[(iy * iw + ix) * ic + i];
                                }
                            }
                        }
                        values[(oy * ow + ox) * oc + o] = relu(acc, *r);
                    }
                }
            }
        }
        FloatOp::Pool { max, kernel: (kh, kw), stride: (sh, sw) } => {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..oc {
                        let taps = (0..kh * kw).map(|k| x.values[((oy * sh + k / kw) * iw + ox * sw + k % kw) * ic + ch]);
                        values[(oy * ow + ox) * oc + ch] =
                            if *max { taps.fold(f64::NEG_INFINITY, f64::max) } else { taps.sum::<f64>() / (kh * kw) as f64 };
                    }
                }
            }
        }
        FloatOp::Flatten => values.copy_from_slice(&x.values),
        FloatOp::Dense { weights_out_in, bias, inputs, relu: r, .. } => {
            for (o, v) in values.iter_mut().enumerate() {
                let row = &weights_out_in[o * inputs..(o + 1) * inputs];
                let acc = row.iter().zip(&x.values).fold(bias[o] as f64, |acc, (&w, &x)| acc + w as f64 * x);
                *v = relu(acc, *r);
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

    #[test]
    fn a_conv_sums_its_taps_and_a_pool_takes_the_max() {
        // 2x2x1 input, one 2x2 kernel of ones, bias 0.5: one output, the sum + bias.
        let conv = FloatOp::Conv {
            weights_oihw: vec![1.0; 4],
            bias: vec![0.5],
            in_c: 1,
            out_c: 1,
            kernel: (2, 2),
            stride: (1, 1),
            padding: Padding::Valid,
            relu: true,
        };
        let net = FloatNet { input: (2, 2, 1), layers: vec![FloatLayer { op: conv, output_name: "c".into() }] };
        let out = net.forward(&[0.1, 0.2, 0.3, 0.4]).unwrap();
        assert!((out[0].values[0] - 1.5).abs() < 1e-12);
        let pool = FloatNet { input: (2, 2, 1), layers: vec![FloatLayer { op: FloatOp::Pool { max: true, kernel: (2, 2), stride: (2, 2) }, output_name: "p".into() }] };
        assert_eq!(pool.forward(&[0.1, 0.7, 0.3, 0.4]).unwrap()[0].values, [0.7]);
    }

    #[test]
    fn nchw_columns_are_permuted_to_nhwc() {
        // One output reading c=2, h=1, w=2: NCHW order (c0x0, c0x1, c1x0, c1x1) -> NHWC (x0c0, x0c1, x1c0, x1c1).
        assert_eq!(nchw_columns_to_nhwc(&[1.0, 2.0, 3.0, 4.0], 1, (2, 1, 2)), [1.0, 3.0, 2.0, 4.0]);
    }
}
