//! The `.lpk` writer: a quantized model in memory, with real-valued scales, as `import` and
//! `quantize` produce it, and its serialization (see `shared/FORMAT.md`). The integer
//! multipliers and shifts the device uses are derived here, once, with TFLite's arithmetic.

pub mod arithmetic;

use anyhow::{bail, ensure, Context, Result};
use lepton_nn::format::{model_crc, Header, OpRecord, Section, TensorRecord, HEADER_LEN, NO_TENSOR, OP_RECORD_LEN, SECTION_ALIGN, TENSOR_RECORD_LEN, VERSION};
use lepton_nn::{Op, Padding, Shape, WeightLayout};

pub use arithmetic::Activation;
use arithmetic::{activation_range, add_params, channel_multipliers, mean_params, softmax_params};

/// How weights are stored for the device: the flash/instructions trade-off of a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Packing {
    /// TFLite's order (OHWI / `[out, in]`): the reference kernels' natural input.
    Canonical,
    /// int8, re-ordered for the DSP kernels (4 channels x 4 taps per step): no flash cost.
    /// Also named `compact`: the small-flash point of the speed/flash trade.
    #[value(alias = "compact")]
    Int8,
    /// Pre-widened to i16 pairs for SMLAD: twice the weight flash, fewest instructions of the
    /// direct kernels.
    #[default]
    I16,
    /// The speed point of the trade, chosen per layer: Winograd F(2x2, 3x3) weights for a 3x3
    /// stride-1 VALID conv whose only reader is a 2x2 stride-2 max-pool, int8 for a fully
    /// connected layer whose i16 weights would pass 32 KiB (one pixel: little to gain from i16,
    /// and it pays for Winograd's flash), i16 elsewhere.
    Fast,
    /// int4 weights (-8..=7) two per byte for convolutions and fully connected layers (the
    /// quantizer makes them: `lepton quantize --weights int4`); depthwise and one-channel
    /// kernels stay int8. Half of `compact`'s weight flash.
    Int4,
}

/// Fully connected layers with more i16 weight bytes than this are stored int8 by [`Packing::Fast`].
const FAST_FC_I16_LIMIT: usize = 32 * 1024;

/// Scale and zero point of an int8 tensor: `real = scale * (q - zero_point)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
}

/// Kernel geometry of a convolution or pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub kernel_h: u8,
    pub kernel_w: u8,
    pub stride_h: u8,
    pub stride_w: u8,
    pub padding: Padding,
}

/// Int8 weights with one float scale per output channel (symmetric, zero point 0).
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    /// Conv: OHWI. Depthwise: `[kh, kw, out]`. Fully connected: `[out, in]`.
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
    pub bias: Vec<i32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum QOp {
    Conv2d { window: Window, weights: Weights, activation: Activation },
    DepthwiseConv2d { window: Window, depth_multiplier: u8, weights: Weights, activation: Activation },
    MaxPool2d { window: Window, activation: Activation },
    AvgPool2d { window: Window, activation: Activation },
    FullyConnected { weights: Weights, activation: Activation },
    /// Two inputs of one shape.
    Add { activation: Activation },
    /// Mean over height and width.
    Mean,
    /// Rows above and below, columns left and right, filled with the zero point.
    Pad { top: u16, bottom: u16, left: u16, right: u16 },
    Reshape,
    Softmax { beta: f32 },
}

impl QOp {
    pub fn name(&self) -> &'static str {
        self.code().name()
    }

    fn code(&self) -> Op {
        match self {
            QOp::Conv2d { .. } => Op::Conv2d,
            QOp::DepthwiseConv2d { .. } => Op::DepthwiseConv2d,
            QOp::MaxPool2d { .. } => Op::MaxPool2d,
            QOp::AvgPool2d { .. } => Op::AvgPool2d,
            QOp::FullyConnected { .. } => Op::FullyConnected,
            QOp::Add { .. } => Op::Add,
            QOp::Mean => Op::Mean,
            QOp::Pad { .. } => Op::Pad,
            QOp::Reshape => Op::Reshape,
            QOp::Softmax { .. } => Op::Softmax,
        }
    }
}

/// An int8 tensor: NHWC with batch 1 (vectors are `1 x 1 x N`).
#[derive(Clone, Debug, PartialEq)]
pub struct QTensor {
    pub shape: Shape,
    pub q: QParams,
}

/// One op of the graph, reading `inputs` and writing `output` (tensor indices).
#[derive(Clone, Debug, PartialEq)]
pub struct QNode {
    pub op: QOp,
    pub inputs: Vec<usize>,
    pub output: usize,
}

/// A quantized graph: tensors, and ops in topological order.
#[derive(Clone, Debug, PartialEq)]
pub struct QModel {
    pub tensors: Vec<QTensor>,
    pub nodes: Vec<QNode>,
    pub input: usize,
    pub output: usize,
}

/// One op of a chain and the tensor it produces.
#[derive(Clone, Debug, PartialEq)]
pub struct QLayer {
    pub op: QOp,
    pub output_shape: Shape,
    pub output: QParams,
}

impl QModel {
    /// A chain of layers, each reading the previous one's output.
    pub fn chain(input_shape: Shape, input: QParams, layers: Vec<QLayer>) -> QModel {
        let mut tensors = vec![QTensor { shape: input_shape, q: input }];
        let mut nodes = Vec::with_capacity(layers.len());
        for layer in layers {
            let output = tensors.len();
            tensors.push(QTensor { shape: layer.output_shape, q: layer.output });
            nodes.push(QNode { op: layer.op, inputs: vec![output - 1], output });
        }
        let output = tensors.len() - 1;
        QModel { tensors, nodes, input: 0, output }
    }

    pub fn input_shape(&self) -> Shape {
        self.tensors[self.input].shape
    }

    pub fn input_q(&self) -> QParams {
        self.tensors[self.input].q
    }

    /// Serialize as a `.lpk` blob with [`Packing::default`].
    pub fn to_lpk(&self) -> Result<Vec<u8>> {
        self.to_lpk_with(Packing::default())
    }

    /// Serialize with the weights laid out as `packing` says, where an op can use it. The result
    /// is parsed back with `lepton-nn` before it is returned.
    pub fn to_lpk_with(&self, packing: Packing) -> Result<Vec<u8>> {
        let tables = self.tensors.len() * TENSOR_RECORD_LEN + self.nodes.len() * OP_RECORD_LEN;
        let mut data = Vec::new(); // sections, at offsets relative to the payload start
        let mut records = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let record = self.op_record(node, packing, tables, &mut data).with_context(|| format!("op {i} ({})", node.op.name()))?;
            records.push(record);
        }
        let mut payload = Vec::with_capacity(tables + data.len());
        for t in &self.tensors {
            payload.extend_from_slice(&TensorRecord { shape: t.shape, scale: t.q.scale, zero_point: t.q.zero_point }.encode());
        }
        for r in &records {
            payload.extend_from_slice(&r.encode());
        }
        payload.extend_from_slice(&data);

        let u16_of = |n: usize, what: &str| u16::try_from(n).with_context(|| format!("too many {what}"));
        let header = Header {
            version: VERSION,
            payload_len: u32::try_from(payload.len()).context("model larger than 4 GiB")?,
            crc: 0,
            tensor_count: u16_of(self.tensors.len(), "tensors")?,
            op_count: u16_of(self.nodes.len(), "ops")?,
            input: u16_of(self.input, "tensors")?,
            output: u16_of(self.output, "tensors")?,
        };
        let mut blob = Vec::with_capacity(HEADER_LEN + payload.len());
        blob.extend_from_slice(&header.encode());
        blob.extend_from_slice(&payload);
        let crc = model_crc(&blob);
        blob[12..16].copy_from_slice(&crc.to_le_bytes());
        lepton_nn::Model::parse(&blob).map_err(|e| anyhow::anyhow!("internal error: written model does not parse: {e}"))?;
        Ok(blob)
    }

    /// A 3x3 stride-1 VALID conv whose output only a 2x2 stride-2 VALID max-pool reads (the
    /// Winograd kernel's shape).
    fn winograd_fits(&self, node: &QNode, w: &Window) -> bool {
        let pooled = matches!(self.only_reader(node), Some(QOp::MaxPool2d { window: p, .. })
            if (p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.padding) == (2, 2, 2, 2, Padding::Valid));
        let quads = node.inputs.first().is_some_and(|&t| self.tensors[t].shape.c.is_multiple_of(4));
        (w.kernel_h, w.kernel_w, w.stride_h, w.stride_w, w.padding) == (3, 3, 1, 1, Padding::Valid) && pooled && quads && node.output != self.output
    }

    /// The op of the one node that reads `node`'s output, if one alone does.
    fn only_reader(&self, node: &QNode) -> Option<&QOp> {
        let mut readers = self.nodes.iter().filter(|n| n.inputs.contains(&node.output));
        match (readers.next(), readers.next()) {
            (Some(n), None) => Some(&n.op),
            _ => None,
        }
    }

    fn op_record(&self, node: &QNode, packing: Packing, tables: usize, data: &mut Vec<u8>) -> Result<OpRecord> {
        ensure!(!node.inputs.is_empty() && node.inputs.len() <= 2, "{} inputs", node.inputs.len());
        let tensor = |t: usize| self.tensors.get(t).with_context(|| format!("tensor {t} does not exist"));
        let input = tensor(node.inputs[0])?;
        let output = tensor(node.output)?;
        let id = |t: usize| u16::try_from(t).context("too many tensors");
        let mut r = OpRecord {
            op: node.op.code() as u8,
            inputs: [id(node.inputs[0])?, node.inputs.get(1).map(|&t| id(t)).transpose()?.unwrap_or(NO_TENSOR)],
            output: id(node.output)?,
            ..OpRecord::default()
        };
        let set_window = |r: &mut OpRecord, w: &Window| {
            (r.kernel_h, r.kernel_w, r.stride_h, r.stride_w) = (w.kernel_h, w.kernel_w, w.stride_h, w.stride_w);
            r.padding = w.padding as u8;
        };
        let out = output.q;
        match &node.op {
            QOp::Conv2d { window, weights, activation } => {
                set_window(&mut r, window);
                let packing = if packing == Packing::Fast && self.winograd_fits(node, window) { Packing::Fast } else { packing.direct(false, weights) };
                // A conv that a max-pool alone reads keeps the layouts of the fused conv+pool
                // kernels (the two-pixel kernel would cost the pooled map's RAM).
                let pairs = !matches!(self.only_reader(node), Some(QOp::MaxPool2d { .. }));
                set_weights(&mut r, weights, *activation, input.q, out, Some(packing), pairs, tables, data)?;
            }
            QOp::DepthwiseConv2d { window, depth_multiplier, weights, activation } => {
                set_window(&mut r, window);
                r.depth_multiplier = *depth_multiplier;
                set_weights(&mut r, weights, *activation, input.q, out, None, false, tables, data)?;
            }
            QOp::FullyConnected { weights, activation } => set_weights(&mut r, weights, *activation, input.q, out, Some(packing.direct(true, weights)), false, tables, data)?,
            QOp::MaxPool2d { window, activation } | QOp::AvgPool2d { window, activation } => {
                set_window(&mut r, window);
                (r.act_min, r.act_max) = activation_range(*activation, out.scale, out.zero_point);
            }
            QOp::Add { activation } => {
                let second = tensor(*node.inputs.get(1).context("add needs two inputs")?)?;
                let p = add_params(input.q.scale, second.q.scale, out.scale);
                r.params[..7].copy_from_slice(&p);
                (r.act_min, r.act_max) = activation_range(*activation, out.scale, out.zero_point);
            }
            QOp::Mean => {
                let count = input.shape.h as usize * input.shape.w as usize;
                let (m, s) = mean_params(input.q.scale, out.scale, count);
                r.params[..2].copy_from_slice(&[m, s]);
            }
            QOp::Pad { top, bottom, left, right } => r.params[..4].copy_from_slice(&[*top as i32, *bottom as i32, *left as i32, *right as i32]),
            QOp::Reshape => {}
            QOp::Softmax { beta } => {
                let (multiplier, left_shift, diff_min) = softmax_params(*beta, input.q.scale);
                r.params[..3].copy_from_slice(&[multiplier, left_shift, diff_min]);
            }
        }
        Ok(r)
    }
}

/// Weights, bias, multipliers and shifts of a conv, depthwise or fully-connected op.
/// `packing = None`: the canonical layout only (depthwise); `pairs`: the two-pixel conv kernel
/// may run it.
#[allow(clippy::too_many_arguments)]
fn set_weights(
    r: &mut OpRecord,
    weights: &Weights,
    activation: Activation,
    input: QParams,
    output: QParams,
    packing: Option<Packing>,
    pairs: bool,
    tables: usize,
    data: &mut Vec<u8>,
) -> Result<()> {
    let channels = weights.scales.len();
    if channels == 0 || weights.bias.len() != channels || !weights.values.len().is_multiple_of(channels) {
        bail!("{} weights, {} scales and {} biases do not fit together", weights.values.len(), channels, weights.bias.len());
    }
    let (multipliers, shifts) = channel_multipliers(input.scale, &weights.scales, output.scale);
    (r.act_min, r.act_max) = activation_range(activation, output.scale, output.zero_point);
    let taps = weights.values.len() / channels;
    let layout = match packing {
        // One input channel and a kernel of a few taps (MNIST's first conv): the one-channel
        // kernel widens canonical weights itself.
        _ if one_channel_kernel(r, taps) => WeightLayout::Canonical,
        None | Some(Packing::Canonical) => WeightLayout::Canonical,
        Some(Packing::Int8) => WeightLayout::Oc4Quads,
        // Convs the two-pixel kernel runs: its order.
        Some(Packing::I16) if pairs && pairs_conv(r, taps) && pairs_requantize(r, weights, &multipliers, &shifts, output, taps) => WeightLayout::Oc4SplitI16,
        Some(Packing::I16) => WeightLayout::Oc4PairsI16,
        Some(Packing::Fast) => WeightLayout::Winograd2x2,
        Some(Packing::Int4) => WeightLayout::Oc4Int4,
    };
    if let Some(&w) = weights.values.iter().find(|&&w| !layout.value_range().contains(&(w as i32))) {
        bail!("weight {w} does not fit the {layout:?} layout (int4 weights come from `lepton quantize --weights int4`)");
    }
    r.weight_layout = layout as u8;
    let values = if packing.is_some() { relayout(&weights.values, channels, taps, layout) } else { weights.values.clone() };
    r.weights = push_section(data, tables, values.into_iter().map(|w| w as u8));
    r.bias = push_section(data, tables, weights.bias.iter().flat_map(|b| b.to_le_bytes()));
    r.multipliers = push_section(data, tables, multipliers.iter().flat_map(|m| m.to_le_bytes()));
    r.shifts = push_section(data, tables, shifts.iter().flat_map(|s| s.to_le_bytes()));
    Ok(())
}

/// A conv whose taps are a single-channel kernel of at most 3x3 that is not a whole number of
/// quads: the canonical layout suits its kernel best.
fn one_channel_kernel(r: &OpRecord, taps: usize) -> bool {
    r.op == Op::Conv2d as u8 && taps == r.kernel_h as usize * r.kernel_w as usize && taps <= 9 && !taps.is_multiple_of(4)
}

/// Whether the two-pixel conv kernel requantizes this conv's channels (see
/// `lepton_nn::kernels::fast::pairs_requantize`); `r`'s activation range is set.
fn pairs_requantize(r: &OpRecord, weights: &Weights, multipliers: &[i32], shifts: &[i32], output: QParams, taps: usize) -> bool {
    let bytes = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (m, s, b) = (bytes(multipliers), bytes(shifts), bytes(&weights.bias));
    let requant = lepton_nn::Requant::new(lepton_nn::I32Le::new(&m), lepton_nn::I32Le::new(&s), output.zero_point, r.act_min, r.act_max);
    lepton_nn::kernels::fast::pairs_requantize(&requant, lepton_nn::I32Le::new(&b), weights.scales.len(), taps)
}

/// A conv (the two-pixel kernel's op; it takes any taps, the stored ones rounded up to quads).
fn pairs_conv(r: &OpRecord, taps: usize) -> bool {
    r.op == Op::Conv2d as u8 && taps > 0
}

impl Packing {
    /// The direct-kernel packing [`Packing::Fast`] gives a layer that is not Winograd's; the
    /// others are their own.
    fn direct(self, fully_connected: bool, weights: &Weights) -> Packing {
        match self {
            Packing::Fast if fully_connected && 2 * weights.values.len() > FAST_FC_I16_LIMIT => Packing::Int8,
            Packing::Fast => Packing::I16,
            p => p,
        }
    }
}

/// Canonical `[channel][tap]` weights in `layout`'s order (padding channels and taps are zero).
pub fn relayout(values: &[i8], channels: usize, taps: usize, layout: WeightLayout) -> Vec<i8> {
    let mut out = vec![0i8; layout.bytes(channels, taps).unwrap_or(0)];
    if layout == WeightLayout::Winograd2x2 {
        lepton_nn::types::write_winograd(values, channels, taps / 9, &mut out);
        return out;
    }
    for c in 0..channels {
        for t in 0..taps {
            layout.put(&mut out, c, t, taps, values[c * taps + t]);
        }
    }
    out
}

/// Append a section after the tables, 4-byte aligned so word-reading kernels can use it in place.
fn push_section(data: &mut Vec<u8>, tables: usize, bytes: impl Iterator<Item = u8>) -> Section {
    while !(tables + data.len()).is_multiple_of(SECTION_ALIGN) {
        data.push(0);
    }
    let offset = tables + data.len();
    data.extend(bytes);
    let len = tables + data.len() - offset;
    if len == 0 {
        return Section::default();
    }
    Section { offset: offset as u32, len: len as u32 }
}
