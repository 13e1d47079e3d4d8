//! `lepton import MODEL.tflite`: a TFLite full-integer (int8) model into a [`QModel`].
//!
//! The flatbuffer is read with `tract-tflite`'s generated TFLite schema. Supported: CONV_2D,
//! MAX_POOL_2D, AVERAGE_POOL_2D, FULLY_CONNECTED, RESHAPE, SOFTMAX, the dynamic-batch Flatten
//! pattern Keras emits (SHAPE / STRIDED_SLICE / PACK feeding RESHAPE), and a float-input
//! QUANTIZE / float-output DEQUANTIZE at the edges. Anything else is an error that names it.

use anyhow::{anyhow, bail, ensure, Context, Result};
use lepton_nn::{Padding, Shape};
use tract_tflite::tflite::{self, ActivationFunctionType, BuiltinOperator, TensorType};

use crate::lpk::{Activation, QLayer, QModel, QOp, QParams, Weights, Window};

type Tensors<'a> = flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<tflite::Tensor<'a>>>;

/// Ops that only compute a shape (int32) for a following RESHAPE: skipped.
const SHAPE_OPS: [BuiltinOperator; 4] =
    [BuiltinOperator::SHAPE, BuiltinOperator::STRIDED_SLICE, BuiltinOperator::PACK, BuiltinOperator::CONCATENATION];

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
    ensure!(inputs.len() == 1, "model has {} inputs; Lepton takes one image input", inputs.len());

    let ctx = Ctx { tensors, buffers };
    let mut current = inputs.get(0);
    let mut model_input: Option<(Shape, QParams)> = None;
    let mut layers = Vec::new();

    for (index, op) in operators.iter().enumerate() {
        let code = opcodes.get(op.opcode_index() as usize);
        let builtin = BuiltinOperator(code.builtin_code().0.max(code.deprecated_builtin_code() as i32));
        let name = builtin.variant_name().unwrap_or("UNKNOWN");
        let op_inputs: Vec<i32> = op.inputs().map(|v| v.iter().collect()).unwrap_or_default();
        let op_outputs: Vec<i32> = op.outputs().map(|v| v.iter().collect()).unwrap_or_default();
        let Some(&output) = op_outputs.first() else { bail!("operator {index} ({name}) has no output") };

        if SHAPE_OPS.contains(&builtin) && ctx.tensor(output)?.type_() == TensorType::INT32 {
            continue;
        }
        if op_inputs.first() != Some(&current) {
            bail!("operator {index} ({name}) does not read the previous layer's output: Lepton imports chains of layers");
        }
        let in_tensor = ctx.tensor(current)?;
        if builtin == BuiltinOperator::QUANTIZE && model_input.is_none() && layers.is_empty() {
            ensure!(in_tensor.type_() == TensorType::FLOAT32, "QUANTIZE of a {:?} input is not supported", in_tensor.type_());
            model_input = Some((ctx.shape(output)?, ctx.activation_qparams(output)?));
            current = output;
            continue;
        }
        if builtin == BuiltinOperator::DEQUANTIZE && index + 1 == operators.len() {
            break; // the int8 logits are the output; dequantizing is the host's business
        }
        if model_input.is_none() {
            model_input = Some((ctx.shape(current)?, ctx.activation_qparams(current)?));
        }

        let output_shape = ctx.shape(output)?;
        let output_q = ctx.activation_qparams(output)?;
        let qop = match builtin {
            BuiltinOperator::CONV_2D => {
                let o = op.builtin_options_as_conv_2_doptions().context("CONV_2D without options")?;
                ensure!(o.dilation_w_factor() == 1 && o.dilation_h_factor() == 1, "operator {index}: dilated CONV_2D is not supported");
                let weights = ctx.weights(&op_inputs, 4)?;
                let dims = ctx.dims(op_inputs[1])?;
                let window = Window {
                    kernel_h: small(dims[1], "kernel height")?,
                    kernel_w: small(dims[2], "kernel width")?,
                    stride_h: small(o.stride_h(), "stride")?,
                    stride_w: small(o.stride_w(), "stride")?,
                    padding: padding(o.padding())?,
                };
                QOp::Conv2d { window, weights, activation: activation(o.fused_activation_function(), index)? }
            }
            BuiltinOperator::MAX_POOL_2D | BuiltinOperator::AVERAGE_POOL_2D => {
                let o = op.builtin_options_as_pool_2_doptions().context("pool without options")?;
                let window = Window {
                    kernel_h: small(o.filter_height(), "pool height")?,
                    kernel_w: small(o.filter_width(), "pool width")?,
                    stride_h: small(o.stride_h(), "stride")?,
                    stride_w: small(o.stride_w(), "stride")?,
                    padding: padding(o.padding())?,
                };
                ensure!(ctx.activation_qparams(current)? == output_q, "operator {index} ({name}) requantizes, which Lepton's pools do not");
                let activation = activation(o.fused_activation_function(), index)?;
                if builtin == BuiltinOperator::MAX_POOL_2D {
                    QOp::MaxPool2d { window, activation }
                } else {
                    QOp::AvgPool2d { window, activation }
                }
            }
            BuiltinOperator::FULLY_CONNECTED => {
                let o = op.builtin_options_as_fully_connected_options().context("FULLY_CONNECTED without options")?;
                ensure!(
                    o.weights_format() == tflite::FullyConnectedOptionsWeightsFormat::DEFAULT,
                    "operator {index}: shuffled FULLY_CONNECTED weights are not supported"
                );
                QOp::FullyConnected { weights: ctx.weights(&op_inputs, 2)?, activation: activation(o.fused_activation_function(), index)? }
            }
            BuiltinOperator::RESHAPE => {
                ensure!(ctx.activation_qparams(current)? == output_q, "operator {index}: RESHAPE that requantizes");
                QOp::Reshape
            }
            BuiltinOperator::SOFTMAX => {
                let beta = op.builtin_options_as_softmax_options().map(|o| o.beta()).unwrap_or(1.0);
                ensure!(
                    output_q == QParams { scale: 1.0 / 256.0, zero_point: -128 },
                    "operator {index}: int8 SOFTMAX output must have scale 1/256 and zero point -128"
                );
                QOp::Softmax { beta }
            }
            other => bail!(
                "unsupported TFLite op {} (operator {index}); Lepton imports CONV_2D, MAX_POOL_2D, AVERAGE_POOL_2D, \
                 FULLY_CONNECTED, RESHAPE, SOFTMAX and the Keras Flatten pattern",
                other.variant_name().unwrap_or("UNKNOWN")
            ),
        };
        layers.push(QLayer { op: qop, output_shape, output: output_q });
        current = output;
    }
    let (input_shape, input) = model_input.context("model has no layers")?;
    ensure!(!layers.is_empty(), "model has no layers");
    Ok(QModel { input_shape, input, layers })
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
        let d = |x: i32| u16::try_from(x).map_err(|_| anyhow!("tensor {} has dimension {x}", self.name(i)));
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
        Ok(QParams { scale: scales[0], zero_point: zps[0] as i32 })
    }

    fn data(&self, i: i32) -> Result<&'a [u8]> {
        let t = self.tensor(i)?;
        let buffer = self.buffers.get(t.buffer() as usize);
        Ok(buffer.data().map(|d| d.bytes()).unwrap_or(&[]))
    }

    /// Int8 weights (`[O, ...]`, symmetric, per-channel or per-tensor) and the int32 bias.
    fn weights(&self, inputs: &[i32], rank: usize) -> Result<Weights> {
        let w = *inputs.get(1).context("layer without weights")?;
        let t = self.tensor(w)?;
        ensure!(t.type_() == TensorType::INT8, "weights {} are not int8 (hybrid and float models are not supported)", self.name(w));
        let dims = self.dims(w)?;
        ensure!(dims.len() == rank && dims[0] > 0, "weights {} have shape {dims:?}", self.name(w));
        let channels = dims[0] as usize;
        let values: Vec<i8> = self.data(w)?.iter().map(|&b| b as i8).collect();
        let expected: usize = dims.iter().map(|&d| d.max(0) as usize).product();
        ensure!(values.len() == expected, "weights {} hold {} bytes, expected {expected}", self.name(w), values.len());

        let q = t.quantization().with_context(|| format!("weights {} are not quantized", self.name(w)))?;
        let mut scales: Vec<f32> = q.scale().map(|v| v.iter().collect()).unwrap_or_default();
        if scales.len() == 1 {
            scales = vec![scales[0]; channels];
        }
        ensure!(scales.len() == channels, "weights {} have {} scales for {channels} channels", self.name(w), scales.len());
        ensure!(q.zero_point().is_none_or(|z| z.iter().all(|z| z == 0)), "weights {} are not symmetric (zero point != 0)", self.name(w));
        ensure!(q.quantized_dimension() == 0, "weights {} are quantized along axis {}, expected 0", self.name(w), q.quantized_dimension());

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

fn padding(p: tflite::Padding) -> Result<Padding> {
    match p {
        tflite::Padding::SAME => Ok(Padding::Same),
        tflite::Padding::VALID => Ok(Padding::Valid),
        other => bail!("unknown padding {other:?}"),
    }
}

fn activation(a: ActivationFunctionType, index: usize) -> Result<Activation> {
    match a {
        ActivationFunctionType::NONE => Ok(Activation::None),
        ActivationFunctionType::RELU => Ok(Activation::Relu),
        ActivationFunctionType::RELU6 => Ok(Activation::Relu6),
        other => bail!("operator {index}: fused activation {} is not supported", other.variant_name().unwrap_or("UNKNOWN")),
    }
}
