//! `lepton import MODEL.tflite`: a TFLite full-integer (int8) model into a [`QModel`] graph.
//!
//! The flatbuffer is read with `tract-tflite`'s generated TFLite schema. Supported: CONV_2D,
//! DEPTHWISE_CONV_2D, ADD, MAX_POOL_2D, AVERAGE_POOL_2D, MEAN (over height and width), PAD,
//! FULLY_CONNECTED, RESHAPE, SOFTMAX, the shape arithmetic Keras emits for a dynamic-batch
//! Flatten (SHAPE / STRIDED_SLICE / PACK / CONCATENATION feeding RESHAPE), and a float-input
//! QUANTIZE / float-output DEQUANTIZE at the edges. Anything else is an error that names the op.

use std::collections::HashMap;

use anyhow::{anyhow, bail, ensure, Context, Result};
use lepton_nn::{Padding, Shape};
use tract_tflite::tflite::{self, ActivationFunctionType, BuiltinOperator, TensorType};

use crate::lpk::{Activation, QModel, QNode, QOp, QParams, QTensor, Weights, Window};

type Tensors<'a> = flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<tflite::Tensor<'a>>>;

/// Ops that only compute a shape (int32) for a following RESHAPE: skipped.
const SHAPE_OPS: [BuiltinOperator; 4] =
    [BuiltinOperator::SHAPE, BuiltinOperator::STRIDED_SLICE, BuiltinOperator::PACK, BuiltinOperator::CONCATENATION];

const SUPPORTED: &str = "CONV_2D, DEPTHWISE_CONV_2D, ADD, MAX_POOL_2D, AVERAGE_POOL_2D, MEAN, PAD, FULLY_CONNECTED, RESHAPE, SOFTMAX";

pub fn import_tflite(bytes: &[u8]) -> Result<QModel> {
    let model = tflite::root_as_model(bytes).map_err(|e| anyhow!("not a TFLite flatbuffer: {e}"))?;
    let subgraphs = model.subgraphs().context("TFLite model has no subgraphs")?;
    ensure!(subgraphs.len() == 1, "TFLite model has {} subgraphs; Lepton imports single-subgraph models", subgraphs.len());
    let graph = subgraphs.get(0);
    let tensors = graph.tensors().context("subgraph has no tensors")?;
    let operators = graph.operators().context("subgraph has no operators")?;
    let opcodes = model.operator_codes().context("model has no operator codes")?;
    let buffers = model.buffers().context("model has no buffers")?;
    let inputs = graph.inputs().context("subgraph has no inputs")?;
    let outputs = graph.outputs().context("subgraph has no outputs")?;
    ensure!(inputs.len() == 1, "model has {} inputs; Lepton takes one input tensor", inputs.len());
    ensure!(outputs.len() == 1, "model has {} outputs; Lepton gives one output tensor", outputs.len());

    let ctx = Ctx { tensors, buffers };
    let mut graph_out = Graph::default();
    // A float graph input that a QUANTIZE turns into int8: that int8 tensor is the model input.
    let mut input = inputs.get(0);
    let mut output = outputs.get(0);
    for (index, op) in operators.iter().enumerate() {
        let code = element(&opcodes, op.opcode_index() as usize, "operator code")?;
        let builtin = BuiltinOperator(code.builtin_code().0.max(code.deprecated_builtin_code() as i32));
        let name = builtin.variant_name().unwrap_or("UNKNOWN");
        let op_inputs: Vec<i32> = op.inputs().map(|v| v.iter().collect()).unwrap_or_default();
        let op_outputs: Vec<i32> = op.outputs().map(|v| v.iter().collect()).unwrap_or_default();
        let Some(&out) = op_outputs.first() else { bail!("operator {index} ({name}) has no output") };
        let context = || format!("operator {index} ({name})");

        if SHAPE_OPS.contains(&builtin) && ctx.tensor(out)?.type_() == TensorType::INT32 {
            continue;
        }
        let first = *op_inputs.first().with_context(|| format!("operator {index} ({name}) has no input"))?;
        if builtin == BuiltinOperator::QUANTIZE && first == input && ctx.tensor(first)?.type_() == TensorType::FLOAT32 {
            input = out;
            continue;
        }
        if builtin == BuiltinOperator::DEQUANTIZE && out == output {
            output = first; // the int8 output is the model's; dequantizing is the host's business
            continue;
        }
        let node = convert(&ctx, builtin, &op, &op_inputs, out, index).with_context(context)?;
        let node_inputs = node.1.iter().map(|&t| graph_out.tensor(&ctx, t)).collect::<Result<Vec<_>>>().with_context(context)?;
        let node_output = graph_out.tensor(&ctx, out).with_context(context)?;
        graph_out.nodes.push(QNode { op: node.0, inputs: node_inputs, output: node_output });
    }
    ensure!(!graph_out.nodes.is_empty(), "model has no layers");
    let input = *graph_out.ids.get(&input).context("the model input is read by no supported op")?;
    let output = *graph_out.ids.get(&output).context("the model output is written by no supported op")?;
    Ok(QModel { tensors: graph_out.tensors, nodes: graph_out.nodes, input, output })
}

/// The graph being built: TFLite tensor index to Lepton tensor index.
#[derive(Default)]
struct Graph {
    tensors: Vec<QTensor>,
    nodes: Vec<QNode>,
    ids: HashMap<i32, usize>,
}

impl Graph {
    fn tensor(&mut self, ctx: &Ctx, t: i32) -> Result<usize> {
        if let Some(&id) = self.ids.get(&t) {
            return Ok(id);
        }
        let id = self.tensors.len();
        self.tensors.push(QTensor { shape: ctx.shape(t)?, q: ctx.activation_qparams(t)? });
        self.ids.insert(t, id);
        Ok(id)
    }
}

/// The Lepton op of one TFLite operator and the activation tensors it reads.
fn convert(ctx: &Ctx, builtin: BuiltinOperator, op: &tflite::Operator, inputs: &[i32], out: i32, index: usize) -> Result<(QOp, Vec<i32>)> {
    let first = inputs[0];
    let same_q = |what: &str| -> Result<()> {
        ensure!(ctx.activation_qparams(first)? == ctx.activation_qparams(out)?, "{what} that requantizes is not supported");
        Ok(())
    };
    let qop = match builtin {
        BuiltinOperator::CONV_2D => {
            let o = op.builtin_options_as_conv_2_doptions().context("CONV_2D without options")?;
            ensure!(o.dilation_w_factor() == 1 && o.dilation_h_factor() == 1, "dilated CONV_2D is not supported");
            let dims = ctx.dims(*inputs.get(1).context("no weights")?)?;
            ensure!(dims.len() == 4, "CONV_2D weights have shape {dims:?}");
            let window = window(dims[1], dims[2], o.stride_h(), o.stride_w(), o.padding())?;
            QOp::Conv2d { window, weights: ctx.weights(inputs, 0)?, activation: activation(o.fused_activation_function())? }
        }
        BuiltinOperator::DEPTHWISE_CONV_2D => {
            let o = op.builtin_options_as_depthwise_conv_2_doptions().context("DEPTHWISE_CONV_2D without options")?;
            ensure!(o.dilation_w_factor() == 1 && o.dilation_h_factor() == 1, "dilated DEPTHWISE_CONV_2D is not supported");
            let dims = ctx.dims(*inputs.get(1).context("no weights")?)?;
            ensure!(dims.len() == 4 && dims[0] == 1, "DEPTHWISE_CONV_2D weights have shape {dims:?}");
            let window = window(dims[1], dims[2], o.stride_h(), o.stride_w(), o.padding())?;
            let in_c = ctx.shape(first)?.c as i32;
            ensure!(in_c > 0 && dims[3] % in_c == 0, "depthwise output channels {} are not a multiple of the input's {in_c}", dims[3]);
            let depth_multiplier = u8::try_from(dims[3] / in_c).ok().filter(|&m| m > 0).context("depth multiplier outside 1..=255")?;
            QOp::DepthwiseConv2d { window, depth_multiplier, weights: ctx.weights(inputs, 3)?, activation: activation(o.fused_activation_function())? }
        }
        BuiltinOperator::MAX_POOL_2D | BuiltinOperator::AVERAGE_POOL_2D => {
            let o = op.builtin_options_as_pool_2_doptions().context("pool without options")?;
            let window = window(o.filter_height(), o.filter_width(), o.stride_h(), o.stride_w(), o.padding())?;
            same_q("a pool")?;
            let activation = activation(o.fused_activation_function())?;
            if builtin == BuiltinOperator::MAX_POOL_2D {
                QOp::MaxPool2d { window, activation }
            } else {
                QOp::AvgPool2d { window, activation }
            }
        }
        BuiltinOperator::FULLY_CONNECTED => {
            let o = op.builtin_options_as_fully_connected_options().context("FULLY_CONNECTED without options")?;
            ensure!(o.weights_format() == tflite::FullyConnectedOptionsWeightsFormat::DEFAULT, "shuffled FULLY_CONNECTED weights are not supported");
            QOp::FullyConnected { weights: ctx.weights(inputs, 0)?, activation: activation(o.fused_activation_function())? }
        }
        BuiltinOperator::ADD => {
            let o = op.builtin_options_as_add_options();
            let act = activation(o.map_or(ActivationFunctionType::NONE, |o| o.fused_activation_function()))?;
            ensure!(inputs.len() == 2, "ADD with {} inputs", inputs.len());
            ensure!(ctx.data(inputs[1])?.is_empty(), "ADD of a constant tensor is not supported (only of two activations)");
            ensure!(ctx.shape(inputs[0])? == ctx.shape(inputs[1])?, "ADD with broadcasting is not supported (the inputs differ in shape)");
            return Ok((QOp::Add { activation: act }, vec![inputs[0], inputs[1]]));
        }
        BuiltinOperator::MEAN => {
            let axes = ctx.int32s(*inputs.get(1).context("MEAN without axes")?)?;
            let rank = ctx.dims(first)?.len() as i32;
            let mut axes: Vec<i32> = axes.iter().map(|&a| if a < 0 { a + rank } else { a }).collect();
            axes.sort_unstable();
            axes.dedup();
            ensure!(rank == 4 && axes == [1, 2], "MEAN over axes {axes:?} is not supported (only height and width of a 4-D tensor)");
            QOp::Mean
        }
        BuiltinOperator::PAD => {
            let pads = ctx.int32s(*inputs.get(1).context("PAD without paddings")?)?;
            ensure!(pads.len() == 8, "PAD of a {}-D tensor is not supported (only 4-D)", pads.len() / 2);
            ensure!(pads[0] == 0 && pads[1] == 0 && pads[6] == 0 && pads[7] == 0, "PAD of the batch or channel axis is not supported");
            let p = |v: i32| u16::try_from(v).with_context(|| format!("pad amount {v}"));
            same_q("PAD")?;
            QOp::Pad { top: p(pads[2])?, bottom: p(pads[3])?, left: p(pads[4])?, right: p(pads[5])? }
        }
        BuiltinOperator::RESHAPE => {
            same_q("RESHAPE")?;
            QOp::Reshape
        }
        BuiltinOperator::SOFTMAX => {
            let beta = op.builtin_options_as_softmax_options().map(|o| o.beta()).unwrap_or(1.0);
            ensure!(
                ctx.activation_qparams(out)? == (QParams { scale: 1.0 / 256.0, zero_point: -128 }),
                "int8 SOFTMAX output must have scale 1/256 and zero point -128"
            );
            QOp::Softmax { beta }
        }
        other => bail!("unsupported TFLite op {} (operator {index}); Lepton imports {SUPPORTED} and the Keras Flatten pattern", other.variant_name().unwrap_or("UNKNOWN")),
    };
    Ok((qop, vec![first]))
}

/// Element `i` of a flatbuffer vector, or an error naming what was looked up (the vector's own
/// `get` asserts the index).
fn element<'a, T: flatbuffers::Follow<'a> + 'a>(v: &flatbuffers::Vector<'a, T>, i: usize, what: &str) -> Result<T::Inner> {
    ensure!(i < v.len(), "{what} {i} out of range: the model has {}", v.len());
    Ok(v.get(i))
}

struct Ctx<'a> {
    tensors: Tensors<'a>,
    buffers: flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<tflite::Buffer<'a>>>,
}

impl<'a> Ctx<'a> {
    fn tensor(&self, i: i32) -> Result<tflite::Tensor<'a>> {
        ensure!(i >= 0 && (i as usize) < self.tensors.len(), "tensor index {i} out of range");
        Ok(self.tensors.get(i as usize))
    }

    fn name(&self, i: i32) -> String {
        self.tensor(i).ok().and_then(|t| t.name().map(str::to_string)).unwrap_or_else(|| format!("#{i}"))
    }

    fn dims(&self, i: i32) -> Result<Vec<i32>> {
        Ok(self.tensor(i)?.shape().map(|s| s.iter().collect()).unwrap_or_default())
    }

    /// NHWC shape with batch 1 (`[1, h, w, c]` or `[1, n]`).
    fn shape(&self, i: i32) -> Result<Shape> {
        let dims = self.dims(i)?;
        let d = |x: i32| u16::try_from(x).ok().filter(|&v| v > 0).with_context(|| format!("tensor {} has dimension {x}", self.name(i)));
        match dims.as_slice() {
            [1, h, w, c] => Ok(Shape::new(d(*h)?, d(*w)?, d(*c)?)),
            [1, n] => Ok(Shape::new(1, 1, d(*n)?)),
            other => bail!("tensor {} has shape {other:?}; Lepton takes batch-1 NHWC or [1, N] tensors", self.name(i)),
        }
    }

    fn activation_qparams(&self, i: i32) -> Result<QParams> {
        let t = self.tensor(i)?;
        ensure!(
            t.type_() == TensorType::INT8,
            "tensor {} has type {}; Lepton imports full-integer int8 models",
            self.name(i),
            t.type_().variant_name().unwrap_or("UNKNOWN")
        );
        let q = t.quantization().with_context(|| format!("tensor {} is not quantized", self.name(i)))?;
        let scales: Vec<f32> = q.scale().map(|v| v.iter().collect()).unwrap_or_default();
        let zps: Vec<i64> = q.zero_point().map(|v| v.iter().collect()).unwrap_or_default();
        ensure!(scales.len() == 1 && zps.len() == 1, "activation tensor {} must be quantized per tensor", self.name(i));
        ensure!((-128..=127).contains(&zps[0]), "tensor {} zero point {} outside int8", self.name(i), zps[0]);
        ensure!(scales[0].is_finite() && scales[0] > 0.0, "tensor {} has scale {}", self.name(i), scales[0]);
        Ok(QParams { scale: scales[0], zero_point: zps[0] as i32 })
    }

    fn data(&self, i: i32) -> Result<&'a [u8]> {
        let t = self.tensor(i)?;
        let buffer = element(&self.buffers, t.buffer() as usize, "buffer")?;
        Ok(buffer.data().map(|d| d.bytes()).unwrap_or(&[]))
    }

    fn int32s(&self, i: i32) -> Result<Vec<i32>> {
        ensure!(self.tensor(i)?.type_() == TensorType::INT32, "tensor {} is not int32", self.name(i));
        Ok(self.data(i)?.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// Int8 weights (symmetric, per-channel along `axis` or per-tensor) in `[channel][tap]`
    /// order, and the int32 bias. `axis` 0: conv `[O, H, W, I]` and FC `[O, I]`; 3: depthwise
    /// `[1, H, W, C]`, kept in TFLite's order (channels fastest) for the depthwise kernel.
    fn weights(&self, inputs: &[i32], axis: usize) -> Result<Weights> {
        let w = *inputs.get(1).context("layer without weights")?;
        let t = self.tensor(w)?;
        ensure!(t.type_() == TensorType::INT8, "weights {} are not int8 (hybrid and float models are not supported)", self.name(w));
        let dims = self.dims(w)?;
        ensure!(dims.len() > axis && dims.iter().all(|&d| d > 0), "weights {} have shape {dims:?}", self.name(w));
        let channels = dims[axis] as usize;
        let values: Vec<i8> = self.data(w)?.iter().map(|&b| b as i8).collect();
        let expected: usize = dims.iter().map(|&d| d as usize).product();
        ensure!(values.len() == expected, "weights {} hold {} bytes, expected {expected}", self.name(w), values.len());

        let q = t.quantization().with_context(|| format!("weights {} are not quantized", self.name(w)))?;
        let mut scales: Vec<f32> = q.scale().map(|v| v.iter().collect()).unwrap_or_default();
        if scales.len() == 1 {
            scales = vec![scales[0]; channels];
        } else {
            ensure!(q.quantized_dimension() as usize == axis, "weights {} are quantized along axis {}, expected {axis}", self.name(w), q.quantized_dimension());
        }
        ensure!(scales.len() == channels, "weights {} have {} scales for {channels} channels", self.name(w), scales.len());
        ensure!(scales.iter().all(|s| s.is_finite() && *s > 0.0), "weights {} have a scale that is not positive", self.name(w));
        ensure!(q.zero_point().is_none_or(|z| z.iter().all(|z| z == 0)), "weights {} are not symmetric (zero point != 0)", self.name(w));

        let bias = match inputs.get(2) {
            Some(&b) if b >= 0 => {
                ensure!(self.tensor(b)?.type_() == TensorType::INT32, "bias {} is not int32", self.name(b));
                let bytes = self.data(b)?;
                ensure!(bytes.len() == 4 * channels, "bias {} holds {} bytes, expected {}", self.name(b), bytes.len(), 4 * channels);
                bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            _ => vec![0; channels],
        };
        Ok(Weights { values, scales, bias })
    }
}

fn small(x: i32, what: &str) -> Result<u8> {
    u8::try_from(x).ok().filter(|&v| v > 0).with_context(|| format!("{what} {x} outside 1..=255"))
}

fn window(kh: i32, kw: i32, sh: i32, sw: i32, p: tflite::Padding) -> Result<Window> {
    Ok(Window {
        kernel_h: small(kh, "kernel height")?,
        kernel_w: small(kw, "kernel width")?,
        stride_h: small(sh, "stride")?,
        stride_w: small(sw, "stride")?,
        padding: padding(p)?,
    })
}

fn padding(p: tflite::Padding) -> Result<Padding> {
    match p {
        tflite::Padding::SAME => Ok(Padding::Same),
        tflite::Padding::VALID => Ok(Padding::Valid),
        other => bail!("unknown padding {other:?}"),
    }
}

fn activation(a: ActivationFunctionType) -> Result<Activation> {
    match a {
        ActivationFunctionType::NONE => Ok(Activation::None),
        ActivationFunctionType::RELU => Ok(Activation::Relu),
        ActivationFunctionType::RELU6 => Ok(Activation::Relu6),
        other => bail!("fused activation {} is not supported", other.variant_name().unwrap_or("UNKNOWN")),
    }
}
