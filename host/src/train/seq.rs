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
    #[module(skip)]
    qat: Option<QatState>,
}

/// Quantization-aware training: fake quantization in the forward pass with straight-through
/// gradients, as the integer engine will compute. Weights: per output channel, symmetric, the
/// scale `max |w| / 127` (or `/ 7` for 4-bit) that `lepton quantize` gives them. Activations:
/// per tensor, asymmetric, TFLite's parameters of a range tracked (exponential moving average
/// of each batch's min and max) while `tracking` is on; pools keep their input's parameters and a
/// max pool of quantized values needs none. The network input (pixels / 255) is exactly int8.
#[derive(Clone, Debug)]
pub struct QatState {
    pub weight_bits: u32,
    ranges: std::sync::Arc<std::sync::Mutex<Vec<Option<(f32, f32)>>>>,
    tracking: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How much of each new batch's range moves the tracked one.
const RANGE_MOMENTUM: f32 = 0.99;

/// Round half away from zero, as the engine's requantization and `lepton quantize` round
/// (burn's `round` takes ties to even).
fn round_away<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone().abs().add_scalar(0.5).floor() * x.sign()
}

/// `x` quantized to int8 with TFLite's parameters for `(min, max)` and back, gradients straight through.
fn fake_quant<const D: usize>(x: Tensor<D>, (min, max): (f32, f32)) -> Tensor<D> {
    let q = crate::quantize::ptq::activation_qparams(min, max);
    let zp = q.zero_point as f32;
    let y = round_away(x.clone().div_scalar(q.scale)).add_scalar(zp).clamp(-128.0, 127.0).sub_scalar(zp).mul_scalar(q.scale);
    x.clone() + (y - x).detach()
}

/// `y` fake-quantized with the range in `slot`, which first takes in `y`'s own min and max
/// (a moving average) when `tracking`; with the range it used (none before any was tracked).
fn track_and_quantize<const D: usize>(y: Tensor<D>, slot: &mut Option<(f32, f32)>, tracking: bool) -> (Tensor<D>, Option<(f32, f32)>) {
    if tracking {
        let d = y.clone().detach();
        let (lo, hi) = (d.clone().min().into_scalar::<f32>(), d.max().into_scalar::<f32>());
        *slot = Some(match *slot {
            Some((a, b)) => (RANGE_MOMENTUM * a + (1.0 - RANGE_MOMENTUM) * lo, RANGE_MOMENTUM * b + (1.0 - RANGE_MOMENTUM) * hi),
            None => (lo, hi),
        });
    }
    let r = *slot;
    (r.map_or(y.clone(), |r| fake_quant(y, r)), r)
}

/// Weights `[out, ...]` (channel `dim` = 0) or `[in, out]` (`dim` = 1) quantized per output
/// channel, symmetric, to `bits`, and back, gradients straight through.
fn fake_quant_weights<const D: usize>(w: Tensor<D>, bits: u32, out_dim: usize) -> Tensor<D> {
    let max_q = if bits == 4 { 7.0 } else { 127.0 };
    let dims = w.dims();
    let outputs = dims[out_dim];
    let per: usize = dims.iter().product::<usize>() / outputs.max(1);
    // Channel-major 2-D view: [outputs, per].
    let flat: Tensor<2> = if out_dim == 0 { w.clone().reshape([outputs, per]) } else { w.clone().reshape([per, outputs]).transpose() };
    let max = flat.clone().abs().max_dim(1).detach();
    let scale = max.clone().div_scalar(max_q) + max.equal_elem(0.0).float(); // 1 where a channel is all zero
    let q = round_away(flat.clone() / scale.clone()).clamp(-max_q, max_q) * scale;
    let q: Tensor<D> = if out_dim == 0 { q.reshape(dims) } else { q.transpose().reshape(dims) };
    w.clone() + (q - w).detach()
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
        Ok(SeqNet { convs, dense, layers, input, qat: None })
    }

    /// This network with quantization-aware training of `weight_bits` weights, from `ranges`
    /// (per layer, see [`super::arch::Qat`]) or none tracked yet.
    pub fn with_qat(mut self, weight_bits: u32, ranges: Option<Vec<Option<(f32, f32)>>>) -> Self {
        let ranges = ranges.unwrap_or_else(|| vec![None; self.layers.len()]);
        self.qat = Some(QatState { weight_bits, ranges: std::sync::Arc::new(std::sync::Mutex::new(ranges)), tracking: Default::default() });
        self
    }

    /// The seed CNN's parameters in the sequential network of [`Arch::seed`] (to fine-tune it).
    pub fn from_seed(seed: &super::model::Cnn, device: &Device) -> anyhow::Result<Self> {
        let mut net = SeqNet::new(&Arch::seed(), (28, 28, 1), 10, device)?;
        for (to, from) in net.convs.iter_mut().zip([&seed.conv1, &seed.conv2, &seed.conv3]) {
            to.weight = from.weight.clone();
            to.bias = from.bias.clone();
        }
        for (to, from) in net.dense.iter_mut().zip([&seed.fc1, &seed.fc2]) {
            to.weight = from.weight.clone();
            to.bias = from.bias.clone();
        }
        Ok(net)
    }

    /// Track activation ranges in the forward passes from now on (training) or not (evaluation).
    pub fn track_ranges(&self, on: bool) {
        if let Some(q) = &self.qat {
            q.tracking.store(on, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The quantization-aware training state to save, if this network trains so.
    pub fn qat(&self) -> Option<super::arch::Qat> {
        let q = self.qat.as_ref()?;
        let ranges = q.ranges.lock().map(|r| r.clone()).unwrap_or_default();
        Some(super::arch::Qat { weight_bits: q.weight_bits, ranges })
    }

    /// `[batch, c, h, w]` in [0, 1] to `[batch, classes]` logits.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        if let Some(q) = &self.qat {
            return self.run_qat(x, q);
        }
        let fused = uses_cnn_ops(&x.device());
        self.run(x, fused)
    }

    /// The forward pass with fake quantization (burn's layers, so that weights can be replaced).
    fn run_qat(&self, x: Tensor<4>, qat: &QatState) -> Tensor<2> {
        let tracking = qat.tracking.load(std::sync::atomic::Ordering::Relaxed);
        let Ok(mut ranges) = qat.ranges.lock() else { return self.run(x, false) };
        let mut quantize = |i: usize, y: Flow| -> (Flow, Option<(f32, f32)>) {
            let slot = &mut ranges[i];
            match y {
                Flow::Flat(t) => {
                    let (t, r) = track_and_quantize(t, slot, tracking);
                    (Flow::Flat(t), r)
                }
                other => {
                    let (t, r) = track_and_quantize(other.nchw(), slot, tracking);
                    (Flow::Nchw(t), r)
                }
            }
        };
        let bits = qat.weight_bits;
        let mut x = Flow::Nchw(x);
        // The input: pixels / 255, exactly int8 at scale 1/255 and zero point -128.
        let mut current = Some((0.0f32, 1.0f32));
        let (mut convs, mut dense) = (self.convs.iter(), self.dense.iter());
        for (i, r) in self.layers.iter().enumerate() {
            let (next, range) = match r.layer {
                Layer::Conv { act, groups, kernel, .. } => {
                    let mut conv = convs.next().expect("one module per conv layer").clone();
                    // Depthwise and small one-channel kernels stay int8 (as `lepton quantize` keeps them).
                    let b = if groups == 1 && crate::quantize::ptq::int4_stored(r.input.2, kernel * kernel) { bits } else { 8 };
                    conv.weight = burn::module::Param::initialized(burn::module::ParamId::new(), fake_quant_weights(conv.weight.val(), b, 0));
                    quantize(i, Flow::Nchw(activate(conv.forward(x.nchw()), act)))
                }
                Layer::Dense { act, .. } => {
                    let mut l = dense.next().expect("one module per dense layer").clone();
                    l.weight = burn::module::Param::initialized(burn::module::ParamId::new(), fake_quant_weights(l.weight.val(), bits, 1));
                    quantize(i, Flow::Flat(activate(l.forward(x.flat()), act)))
                }
                Layer::GlobalAvgPool => quantize(i, Flow::Nchw(x.nchw().mean_dim(3).mean_dim(2))),
                Layer::Pool { max: true, size, stride } => (Flow::Nchw(MaxPool2dConfig::new([size, size]).with_strides([stride, stride]).init().forward(x.nchw())), current),
                // An average pool over the whole map is MEAN in the integer model, with its own range.
                Layer::Pool { max: false, size, .. } if r.output.0 == 1 && r.output.1 == 1 && (r.input.0, r.input.1) == (size, size) => {
                    quantize(i, Flow::Nchw(x.nchw().mean_dim(3).mean_dim(2)))
                }
                Layer::Pool { max: false, size, stride } => {
                    let y = AvgPool2dConfig::new([size, size]).with_strides([stride, stride]).init().forward(x.nchw());
                    (Flow::Nchw(current.map_or(y.clone(), |r| fake_quant(y, r))), current)
                }
                Layer::Flatten => (Flow::Flat(x.flat()), current),
            };
            x = next;
            current = range;
        }
        x.flat()
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
            qat: None,
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
