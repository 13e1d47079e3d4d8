//! The `.lpk` writer: a quantized model in memory, with real-valued scales: what `import` and `quantize` produce and
//! what is written as a `.lpk` (see `shared/FORMAT.md`). The integer multipliers and shifts the
//! device uses are derived here, once, with TFLite's arithmetic.

use anyhow::{bail, Context, Result};
use lepton_nn::format::{crc32, Header, LayerRecord, Op, Section, HEADER_LEN, INPUT_LUT_LEN, RECORD_LEN, VERSION};
use lepton_nn::{Padding, Shape, WeightLayout};

pub mod arithmetic;

use arithmetic::{activation_range, channel_multipliers, quantize_pixel, softmax_params};
pub use arithmetic::Activation;

/// How weights are stored for the device: the flash/instructions trade-off of a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Packing {
    /// TFLite's order (OHWI / `[out, in]`): the reference kernels' natural input.
    Canonical,
    /// int8, re-ordered for the DSP kernels (4 channels x 4 taps per step): no flash cost.
    Int8,
    /// Pre-widened to i16 pairs for SMLAD: twice the weight flash, fewest instructions.
    #[default]
    I16,
}

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
    /// Conv: OHWI. Fully connected: `[out, in]`.
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
    pub bias: Vec<i32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum QOp {
    Conv2d { window: Window, weights: Weights, activation: Activation },
    MaxPool2d { window: Window, activation: Activation },
    AvgPool2d { window: Window, activation: Activation },
    FullyConnected { weights: Weights, activation: Activation },
    Reshape,
    Softmax { beta: f32 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct QLayer {
    pub op: QOp,
    pub output_shape: Shape,
    pub output: QParams,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QModel {
    pub input_shape: Shape,
    pub input: QParams,
    pub layers: Vec<QLayer>,
}

impl QModel {
    /// Serialize as a `.lpk` blob with [`Packing::default`].
    pub fn to_lpk(&self) -> Result<Vec<u8>> {
        self.to_lpk_with(Packing::default())
    }

    /// Serialize with the weights laid out as `packing` says, where a layer can use it. The
    /// result is parsed back with `lepton-nn` before it is returned.
    pub fn to_lpk_with(&self, packed: Packing) -> Result<Vec<u8>> {
        let mut records = Vec::with_capacity(self.layers.len());
        let mut data = Vec::new(); // sections, offsets relative to the end of the fixed tables
        let mut input_shape = self.input_shape;
        let mut input = self.input;
        for (i, layer) in self.layers.iter().enumerate() {
            let record = layer_record(layer, input_shape, input, packed, &mut data).with_context(|| format!("layer {i}"))?;
            records.push(record);
            input_shape = layer.output_shape;
            input = layer.output;
        }
        let tables = records.len() * RECORD_LEN + INPUT_LUT_LEN;
        let mut payload = Vec::with_capacity(tables + data.len());
        for mut record in records {
            for section in [&mut record.weights, &mut record.bias, &mut record.multipliers, &mut record.shifts] {
                if section.len > 0 {
                    section.offset += tables as u32;
                }
            }
            payload.extend_from_slice(&record.encode());
        }
        payload.extend((0..=255u8).map(|p| quantize_pixel(p, self.input.scale, self.input.zero_point) as u8));
        payload.extend_from_slice(&data);

        let header = Header {
            version: VERSION,
            payload_len: u32::try_from(payload.len()).context("model larger than 4 GiB")?,
            payload_crc: crc32(&payload),
            layer_count: u16::try_from(self.layers.len()).context("too many layers")?,
            flags: 0,
            input: self.input_shape,
            input_scale: self.input.scale,
        };
        let mut blob = Vec::with_capacity(HEADER_LEN + payload.len());
        blob.extend_from_slice(&header.encode());
        blob.extend_from_slice(&payload);
        lepton_nn::Model::parse(&blob).map_err(|e| anyhow::anyhow!("internal error: written model does not parse: {e}"))?;
        Ok(blob)
    }
}

fn layer_record(layer: &QLayer, input_shape: Shape, input: QParams, packed: Packing, data: &mut Vec<u8>) -> Result<LayerRecord> {
    let mut r = LayerRecord {
        input: input_shape,
        output: layer.output_shape,
        input_zp: input.zero_point,
        output_zp: layer.output.zero_point,
        output_scale: layer.output.scale,
        ..LayerRecord::default()
    };
    let set_window = |r: &mut LayerRecord, w: &Window| {
        r.kernel_h = w.kernel_h;
        r.kernel_w = w.kernel_w;
        r.stride_h = w.stride_h;
        r.stride_w = w.stride_w;
        r.padding = w.padding as u8;
    };
    match &layer.op {
        QOp::Conv2d { window, weights, activation } => {
            r.op = Op::Conv2d as u8;
            set_window(&mut r, window);
            set_weights(&mut r, weights, *activation, input, layer.output, packed, data)?;
        }
        QOp::FullyConnected { weights, activation } => {
            r.op = Op::FullyConnected as u8;
            set_weights(&mut r, weights, *activation, input, layer.output, packed, data)?;
        }
        QOp::MaxPool2d { window, activation } | QOp::AvgPool2d { window, activation } => {
            r.op = if matches!(layer.op, QOp::MaxPool2d { .. }) { Op::MaxPool2d } else { Op::AvgPool2d } as u8;
            set_window(&mut r, window);
            (r.act_min, r.act_max) = activation_range(*activation, layer.output.scale, layer.output.zero_point);
        }
        QOp::Reshape => r.op = Op::Reshape as u8,
        QOp::Softmax { beta } => {
            r.op = Op::Softmax as u8;
            let (multiplier, left_shift, diff_min) = softmax_params(*beta, input.scale);
            r.params = [multiplier, left_shift, diff_min];
        }
    }
    Ok(r)
}

fn set_weights(
    r: &mut LayerRecord,
    weights: &Weights,
    activation: Activation,
    input: QParams,
    output: QParams,
    packed: Packing,
    data: &mut Vec<u8>,
) -> Result<()> {
    let channels = r.output.c as usize;
    if weights.scales.len() != channels || weights.bias.len() != channels {
        bail!("{} weight scales and {} biases for {channels} output channels", weights.scales.len(), weights.bias.len());
    }
    let (multipliers, shifts) = channel_multipliers(input.scale, &weights.scales, output.scale);
    (r.act_min, r.act_max) = activation_range(activation, output.scale, output.zero_point);
    let taps = weights.values.len() / channels.max(1);
    let layout = match packed {
        _ if !taps.is_multiple_of(4) => WeightLayout::Canonical,
        Packing::Canonical => WeightLayout::Canonical,
        Packing::Int8 => WeightLayout::Oc4Quads,
        Packing::I16 => WeightLayout::Oc4PairsI16,
    };
    r.weight_layout = layout as u8;
    r.weights = push_section(data, relayout(&weights.values, channels, taps, layout).into_iter().map(|w| w as u8));
    r.bias = push_section(data, weights.bias.iter().flat_map(|b| b.to_le_bytes()));
    r.multipliers = push_section(data, multipliers.iter().flat_map(|m| m.to_le_bytes()));
    r.shifts = push_section(data, shifts.iter().flat_map(|s| s.to_le_bytes()));
    Ok(())
}

/// Canonical `[channel][tap]` weights in `layout`'s order (padding channels are zero).
pub fn relayout(values: &[i8], channels: usize, taps: usize, layout: WeightLayout) -> Vec<i8> {
    let mut out = vec![0i8; layout.bytes(channels, taps).unwrap_or(0)];
    for c in 0..channels {
        for t in 0..taps {
            layout.put(&mut out, c, t, taps, values[c * taps + t]);
        }
    }
    out
}

/// Append a section, 4-byte aligned so word-reading kernels can use it directly.
fn push_section(data: &mut Vec<u8>, bytes: impl Iterator<Item = u8>) -> Section {
    while !data.len().is_multiple_of(4) {
        data.push(0);
    }
    let offset = data.len();
    data.extend(bytes);
    Section { offset: offset as u32, len: (data.len() - offset) as u32 }
}
