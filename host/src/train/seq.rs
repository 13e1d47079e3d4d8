//! A sequential CNN built from an [`Arch`]: burn's own `Conv2d` (grouped for depthwise, with
//! TensorFlow's SAME padding made explicit), pools and `Linear`, in NCHW. On `flex`, each 3x3
//! stride-1 VALID conv with ReLU (and a 2x2 max-pool right after it) runs as the fused NHWC
//! layer of [`super::cnn_ops`], the seed CNN's fast path; [`SeqNet::forward_reference`] runs
//! burn's layers everywhere (the tests check that both agree).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2dConfig, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use lepton_nn::Padding;

use super::arch::{same_padding, Activation, Arch, Layer, Resolved};
use super::export::{dense_op, values};
use super::model::{glorot, uses_cnn_ops, zero_bias};
use crate::float_net::{Act, FloatNet, FloatOp};

#[derive(Module, Debug)]
pub struct SeqNet {
    /// Conv and depthwise layers, in order.
    convs: Vec<Conv2d>,
    dense: Vec<Linear>,
    #[module(skip)]
    layers: Vec<Resolved>,
    #[module(skip)]
    input: (usize, usize, usize),
}

fn conv_module(r: &Resolved, device: &Device) -> Conv2d {
    let Layer::Conv { out_c, kernel, stride, padding, groups, .. } = r.layer else { unreachable!("a conv layer") };
    let (h, w, in_c) = r.input;
    let pad = match padding {
        Padding::Valid => PaddingConfig2d::Valid,
        Padding::Same => {
            let ((top, bottom), (left, right)) = (same_padding(h, kernel, stride), same_padding(w, kernel, stride));
            PaddingConfig2d::Explicit(top, left, bottom, right)
        }
    };
    let mut c = Conv2dConfig::new([in_c, out_c], [kernel, kernel]).with_stride([stride, stride]).with_groups(groups).with_padding(pad).with_initializer(glorot()).init(device);
    c.bias = c.bias.map(zero_bias);
    c
}

fn activate<const D: usize>(x: Tensor<D>, act: Activation) -> Tensor<D> {
    match act {
        Activation::None => x,
        Activation::Relu => relu(x),
        Activation::Relu6 => x.clamp(0.0, 6.0),
    }
}

/// An activation between layers, in whichever layout the last layer left it.
enum Flow {
    Nchw(Tensor<4>),
    Nhwc(Tensor<4>),
    Flat(Tensor<2>),
}

impl Flow {
    fn nchw(self) -> Tensor<4> {
        match self {
            Flow::Nchw(x) => x,
            Flow::Nhwc(x) => x.permute([0, 3, 1, 2]),
            Flow::Flat(x) => {
                let [b, n] = x.dims();
                x.reshape([b, n, 1, 1])
            }
        }
    }

    fn nhwc(self) -> Tensor<4> {
        match self {
            Flow::Nhwc(x) => x,
            other => other.nchw().permute([0, 2, 3, 1]),
        }
    }

    /// Flattened in NHWC order, as Keras and the engine do.
    fn flat(self) -> Tensor<2> {
        match self {
            Flow::Flat(x) => x,
            other => {
                let x = other.nhwc();
                let [b, h, w, c] = x.dims();
                x.reshape([b, h * w * c])
            }
        }
    }
}

impl SeqNet {
    /// Parameters initialised as the seed's (Glorot-uniform weights, zero biases), layer by layer.
    pub fn new(arch: &Arch, input: (usize, usize, usize), classes: usize, device: &Device) -> anyhow::Result<Self> {
        let layers = arch.resolve(input, classes)?;
        let mut convs = Vec::new();
        let mut dense = Vec::new();
        for r in &layers {
            match r.layer {
                Layer::Conv { .. } => convs.push(conv_module(r, device)),
                Layer::Dense { units, .. } => {
                    let mut l = LinearConfig::new(r.input.2, units).with_initializer(glorot()).init(device);
                    l.bias = l.bias.map(zero_bias);
                    dense.push(l);
                }
                _ => {}
            }
        }
        Ok(SeqNet { convs, dense, layers, input })
    }

    /// `[batch, c, h, w]` in [0, 1] to `[batch, classes]` logits.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let fused = uses_cnn_ops(&x.device());
        self.run(x, fused)
    }

    /// The forward pass with burn's own layers, on any backend.
    pub fn forward_reference(&self, x: Tensor<4>) -> Tensor<2> {
        self.run(x, false)
    }

    fn run(&self, x: Tensor<4>, fused: bool) -> Tensor<2> {
        let mut x = Flow::Nchw(x);
        let (mut convs, mut dense) = (self.convs.iter(), self.dense.iter());
        let mut layers = self.layers.iter().peekable();
        while let Some(r) = layers.next() {
            x = match r.layer {
                Layer::Conv { act, .. } => {
                    let conv = convs.next().expect("one module per conv layer");
                    if fused && fusable(&r.layer) {
                        let pool = layers.next_if(|n| n.layer == Layer::Pool { max: true, size: 2, stride: 2 }).is_some();
                        let bias = conv.bias.as_ref().expect("convs have biases").val();
                        Flow::Nhwc(super::cnn_ops::conv3x3_relu(x.nhwc(), conv.weight.val(), bias, pool))
                    } else {
                        Flow::Nchw(activate(conv.forward(x.nchw()), act))
                    }
                }
                Layer::Pool { max: true, size, stride } => Flow::Nchw(MaxPool2dConfig::new([size, size]).with_strides([stride, stride]).init().forward(x.nchw())),
                Layer::Pool { max: false, size, stride } => Flow::Nchw(AvgPool2dConfig::new([size, size]).with_strides([stride, stride]).init().forward(x.nchw())),
                Layer::GlobalAvgPool => Flow::Nchw(x.nchw().mean_dim(3).mean_dim(2)),
                Layer::Flatten => Flow::Flat(x.flat()),
                Layer::Dense { act, .. } => Flow::Flat(activate(dense.next().expect("one module per dense layer").forward(x.flat()), act)),
            };
        }
        x.flat()
    }

    /// The network as a float network ending with a softmax (as the seed's, see
    /// [`super::export::float_net`]).
    pub fn float_net(&self) -> FloatNet {
        let (mut convs, mut dense) = (self.convs.iter(), self.dense.iter());
        let mut layers: Vec<(String, FloatOp)> = Vec::new();
        for (i, r) in self.layers.iter().enumerate() {
            let op = match r.layer {
                Layer::Conv { out_c, kernel, stride, padding, groups, act } => {
                    let c = convs.next().expect("one module per conv layer");
                    FloatOp::Conv {
                        weights_oihw: values(&c.weight),
                        bias: c.bias.as_ref().map(values).unwrap_or_else(|| vec![0.0; out_c]),
                        in_c: r.input.2,
                        out_c,
                        groups,
                        kernel: (kernel, kernel),
                        stride: (stride, stride),
                        padding,
                        act: float_act(act),
                    }
                }
                Layer::Pool { max, size, stride } => FloatOp::Pool { max, kernel: (size, size), stride: (stride, stride), padding: Padding::Valid },
                Layer::GlobalAvgPool => FloatOp::Pool { max: false, kernel: (r.input.0, r.input.1), stride: (r.input.0, r.input.1), padding: Padding::Valid },
                Layer::Flatten => FloatOp::Flatten,
                Layer::Dense { act, .. } => dense_op(dense.next().expect("one module per dense layer"), float_act(act)),
            };
            layers.push((format!("layer{i}"), op));
        }
        layers.push(("softmax".into(), FloatOp::Softmax));
        FloatNet::chain(self.input, layers.iter().map(|(n, op)| (n.as_str(), op.clone())).collect())
    }
}

/// What the fused layer computes: 3x3, stride 1, VALID, ReLU, not grouped.
fn fusable(layer: &Layer) -> bool {
    matches!(layer, Layer::Conv { kernel: 3, stride: 1, padding: Padding::Valid, groups: 1, act: Activation::Relu, .. })
}

fn float_act(act: Activation) -> Act {
    match act {
        Activation::None => Act::None,
        Activation::Relu => Act::Relu,
        Activation::Relu6 => Act::Relu6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::arch::{LayerSpec, PaddingSpec};
    use burn::tensor::{Distribution, Tolerance};

    fn arch() -> Arch {
        let conv = |channels, kernel, stride, padding, activation| LayerSpec::Conv { channels, kernel, stride, padding, activation };
        Arch {
            name: "mixed".into(),
            input: None,
            layers: vec![
                conv(4, 3, 1, PaddingSpec::Valid, Activation::Relu),
                LayerSpec::MaxPool { size: 2, stride: None },
                LayerSpec::Depthwise { kernel: 3, stride: 2, padding: PaddingSpec::Same, multiplier: 2, activation: Activation::Relu6 },
                conv(6, 1, 1, PaddingSpec::Same, Activation::None),
                LayerSpec::Relu,
                LayerSpec::AvgPool { size: 2, stride: Some(1) },
                conv(5, 3, 1, PaddingSpec::Valid, Activation::Relu),
                LayerSpec::GlobalAvgPool,
                LayerSpec::Dense { units: 10, activation: Activation::None },
            ],
        }
    }

    /// The fused path (flex) and burn's own layers agree in logits and in every gradient.
    #[test]
    fn fused_and_reference_paths_agree_in_logits_and_gradients() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let net = SeqNet::new(&arch(), (16, 16, 1), 10, &device).unwrap();
        let x = Tensor::<4>::random([3, 1, 16, 16], Distribution::Uniform(0.0, 1.0), &device);
        let fused = net.forward(x.clone());
        let reference = net.forward_reference(x);
        fused.clone().into_data().assert_approx_eq::<f32>(&reference.clone().into_data(), Tolerance::absolute(1e-5));
        let (gf, gr) = (fused.sum().backward(), reference.sum().backward());
        for conv in &net.convs {
            let (da, db) = (conv.weight.val().grad(&gf).unwrap(), conv.weight.val().grad(&gr).unwrap());
            da.into_data().assert_approx_eq::<f32>(&db.into_data(), Tolerance::absolute(1e-4));
        }
    }

    /// The exported float network computes what burn computes (SAME padding, depthwise order,
    /// NHWC flattening).
    #[test]
    fn the_float_net_matches_burn() {
        let device = Device::flex();
        device.seed(5);
        let net = SeqNet::new(&arch(), (16, 16, 1), 10, &device).unwrap();
        let x = Tensor::<4>::random([1, 1, 16, 16], Distribution::Uniform(0.0, 1.0), &device);
        let logits: Vec<f32> = net.forward_reference(x.clone()).into_data().try_to_vec().unwrap();
        let pixels: Vec<f64> = x.into_data().try_to_vec::<f32>().unwrap().iter().map(|&v| v as f64).collect();
        let float = net.float_net();
        let tensors = float.forward(&pixels).unwrap();
        let before_softmax = &tensors[tensors.len() - 2].values;
        for (a, b) in before_softmax.iter().zip(&logits) {
            assert!((a - *b as f64).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
