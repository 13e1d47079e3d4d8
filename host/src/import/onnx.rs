//! `lepton import FILE.onnx`: a float ONNX CNN (Conv, Relu, MaxPool, AveragePool, Gemm or
//! MatMul + Add, Flatten/Reshape, Transpose, Softmax; NCHW as PyTorch exports it, or
//! NHWC-with-transposes as tf2onnx does) to a Lepton model: the graph is read from the ONNX
//! protobuf (tract-onnx's schema) into a [`FloatNet`], calibrated on MNIST training images and
//! quantized with the same code as `lepton quantize`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use lepton_nn::Padding;
use prost::Message;
use tract_onnx::pb::{ModelProto, NodeProto, TensorProto};

use crate::data::Split;
use crate::float_net::{nchw_columns_to_nhwc, FloatLayer, FloatNet, FloatOp};
use crate::lpk::QModel;

/// Read the layer sequence of an ONNX model.
pub fn parse(bytes: &[u8]) -> Result<FloatNet> {
    let model = ModelProto::decode(bytes).map_err(|e| anyhow!("not an ONNX model: {e}"))?;
    let graph = model.graph.context("ONNX model has no graph")?;
    let inits: HashMap<&str, &TensorProto> = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let (input, dims) = crate::onnx::graph_input(&graph)?;
    // Logical layout of the current tensor: NCHW (ONNX's own) unless a transpose made it NHWC.
    let (mut nchw, mut shape) = match dims.as_slice() {
        [_, 1, 28, 28] => (true, (1usize, 28usize, 28usize)),
        [_, 28, 28, 1] => (false, (1, 28, 28)),
        other => bail!("ONNX input has shape {other:?}; Lepton imports [N, 1, 28, 28] (NCHW) or [N, 28, 28, 1] (NHWC) images"),
    };
    let mut current = input.name.clone();
    let mut layers: Vec<FloatLayer> = Vec::new();
    let mut flattened = false;
    // Set by an NCHW flatten: the next dense layer's inputs are permuted to the engine's NHWC order.
    let mut permute: Option<(usize, usize, usize)> = None;
    for node in &graph.node {
        let first = node.input.first().map(String::as_str).unwrap_or("");
        let out = node.output.first().cloned().unwrap_or_default();
        if first != current {
            if ["Constant", "Shape", "Gather", "Unsqueeze", "Concat"].contains(&node.op_type.as_str()) {
                continue; // shape arithmetic feeding a Reshape
            }
            bail!("ONNX node {} ({}) does not read the previous layer's output: Lepton imports chains of layers", node.name, node.op_type);
        }
        match node.op_type.as_str() {
            "Identity" | "Dropout" => {}
            "Transpose" => match ints(node, "perm").as_slice() {
                [0, 2, 3, 1] => nchw = false,
                [0, 3, 1, 2] => nchw = true,
                [0, 1] | [1, 0] if flattened => {}
                p => bail!("ONNX Transpose with perm {p:?} is not supported (only NCHW <-> NHWC)"),
            },
            "Conv" => {
                ensure!(nchw, "ONNX Conv on an NHWC tensor (missing Transpose)");
                ensure!(int(node, "group", 1) == 1, "grouped or depthwise ONNX Conv is not supported");
                ensure!(ints(node, "dilations").iter().all(|&d| d == 1), "dilated ONNX Conv is not supported");
                let w = tensor(&inits, node.input.get(1), "Conv weights")?;
                ensure!(w.dims.len() == 4, "Conv weights must be 4-D");
                let (o, i, kh, kw) = (w.dims[0] as usize, w.dims[1] as usize, w.dims[2] as usize, w.dims[3] as usize);
                ensure!(i == shape.0, "Conv expects {i} input channels, the tensor has {}", shape.0);
                let bias = match node.input.get(2) {
                    Some(b) if !b.is_empty() => floats(tensor(&inits, Some(b), "Conv bias")?)?,
                    _ => vec![0.0; o],
                };
                let strides = ints(node, "strides");
                let (sh, sw) = (*strides.first().unwrap_or(&1) as usize, *strides.get(1).unwrap_or(&1) as usize);
                let padding = conv_padding(node, (shape.1, shape.2), (kh, kw), (sh, sw))?;
                let (oh, ow) = (padding.output_size(shape.1, kh, sh).context("kernel larger than input")?, padding.output_size(shape.2, kw, sw).context("kernel larger than input")?);
                layers.push(FloatLayer {
                    op: FloatOp::Conv { weights_oihw: floats(w)?, bias, in_c: i, out_c: o, kernel: (kh, kw), stride: (sh, sw), padding, relu: false },
                    output_name: out.clone(),
                });
                shape = (o, oh, ow);
            }
            "Relu" => match layers.last_mut().map(|l| &mut l.op) {
                Some(FloatOp::Conv { relu, .. }) | Some(FloatOp::Dense { relu, .. }) if !*relu => {
                    *relu = true;
                    layers.last_mut().unwrap().output_name = out.clone();
                }
                _ => bail!("ONNX Relu that does not follow a Conv or Gemm is not supported"),
            },
            "MaxPool" | "AveragePool" => {
                let k = ints(node, "kernel_shape");
                ensure!(k.len() == 2, "pooling needs a 2-D kernel_shape");
                ensure!(ints(node, "pads").iter().all(|&p| p == 0), "padded ONNX pooling is not supported");
                let s = ints(node, "strides");
                let (kh, kw) = (k[0] as usize, k[1] as usize);
                let (sh, sw) = (*s.first().unwrap_or(&1) as usize, *s.get(1).unwrap_or(&1) as usize);
                let max = node.op_type == "MaxPool";
                layers.push(FloatLayer { op: FloatOp::Pool { max, kernel: (kh, kw), stride: (sh, sw) }, output_name: out.clone() });
                shape = (shape.0, (shape.1 - kh) / sh + 1, (shape.2 - kw) / sw + 1);
            }
            "Flatten" | "Reshape" => {
                if !flattened {
                    // Our engine's buffers are NHWC; an NCHW flatten permutes the next layer's inputs.
                    permute = nchw.then_some(shape);
                    layers.push(FloatLayer { op: FloatOp::Flatten, output_name: out.clone() });
                    flattened = true;
                }
            }
            "Gemm" | "MatMul" => {
                ensure!(flattened || (shape.1 == 1 && shape.2 == 1), "ONNX {} before a Flatten is not supported", node.op_type);
                let w = tensor(&inits, node.input.get(1), "Gemm weights")?;
                ensure!(w.dims.len() == 2, "Gemm weights must be 2-D");
                let trans_b = node.op_type == "Gemm" && int(node, "transB", 0) == 1;
                ensure!(node.op_type == "MatMul" || int(node, "transA", 0) == 0, "Gemm with transA is not supported");
                let values = floats(w)?;
                let (outputs, inputs) = if trans_b { (w.dims[0] as usize, w.dims[1] as usize) } else { (w.dims[1] as usize, w.dims[0] as usize) };
                let weights_out_in = if trans_b { values } else { (0..outputs).flat_map(|o| (0..inputs).map(move |i| (o, i))).map(|(o, i)| values[i * outputs + o]).collect() };
                let weights_out_in = match permute.take() {
                    Some(chw) => nchw_columns_to_nhwc(&weights_out_in, outputs, chw),
                    None => weights_out_in,
                };
                let bias = match node.input.get(2) {
                    Some(b) if !b.is_empty() => floats(tensor(&inits, Some(b), "Gemm bias")?)?,
                    _ => vec![0.0; outputs],
                };
                layers.push(FloatLayer { op: FloatOp::Dense { weights_out_in, bias, inputs, outputs, relu: false }, output_name: out.clone() });
                shape = (outputs, 1, 1);
            }
            "Add" => match layers.last_mut().map(|l| &mut l.op) {
                Some(FloatOp::Dense { bias, outputs, relu: false, .. }) => {
                    let b = floats(tensor(&inits, node.input.get(1), "Add bias")?)?;
                    ensure!(b.len() == *outputs, "Add after MatMul must add one bias per output");
                    for (x, y) in bias.iter_mut().zip(b) {
                        *x += y;
                    }
                    layers.last_mut().unwrap().output_name = out.clone();
                }
                _ => bail!("ONNX Add is only supported as the bias of a MatMul"),
            },
            "Softmax" => layers.push(FloatLayer { op: FloatOp::Softmax, output_name: out.clone() }),
            other => bail!(
                "unsupported ONNX op {other} (node {}); Lepton imports Conv, Relu, MaxPool, AveragePool, Gemm, MatMul+Add, Flatten, Reshape, Transpose, Softmax",
                node.name
            ),
        }
        current = out;
    }
    ensure!(layers.iter().any(|l| matches!(l.op, FloatOp::Conv { .. } | FloatOp::Dense { .. })), "the ONNX model has no Conv or Gemm layer");
    let net = FloatNet { input: (28, 28, 1), layers };
    net.shapes()?;
    Ok(net)
}

fn conv_padding(node: &NodeProto, input: (usize, usize), k: (usize, usize), s: (usize, usize)) -> Result<Padding> {
    let auto = node.attribute.iter().find(|a| a.name == "auto_pad").map(|a| String::from_utf8_lossy(&a.s).to_string()).unwrap_or_default();
    let pads = ints(node, "pads");
    if auto == "SAME_UPPER" {
        return Ok(Padding::Same);
    }
    if pads.iter().all(|&p| p == 0) && (auto.is_empty() || auto == "NOTSET" || auto == "VALID") {
        return Ok(Padding::Valid);
    }
    // Explicit pads equal to TFLite's SAME (the extra pixel at the bottom/right).
    let same = |n: usize, k: usize, s: usize| {
        let out = n.div_ceil(s);
        let total = ((out - 1) * s + k).saturating_sub(n);
        (total / 2, total - total / 2)
    };
    let ((t, b), (l, r)) = (same(input.0, k.0, s.0), same(input.1, k.1, s.1));
    if pads == [t as i64, l as i64, b as i64, r as i64] {
        return Ok(Padding::Same);
    }
    bail!("ONNX Conv padding {pads:?} is neither VALID nor SAME")
}

fn ints(node: &NodeProto, name: &str) -> Vec<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.ints.clone()).unwrap_or_default()
}

fn int(node: &NodeProto, name: &str, default: i64) -> i64 {
    node.attribute.iter().find(|a| a.name == name).map_or(default, |a| a.i)
}

fn tensor<'a>(inits: &HashMap<&str, &'a TensorProto>, name: Option<&String>, what: &str) -> Result<&'a TensorProto> {
    let name = name.with_context(|| format!("{what} missing"))?;
    inits.get(name.as_str()).copied().with_context(|| format!("{what} {name} is not a constant initializer"))
}

fn floats(t: &TensorProto) -> Result<Vec<f32>> {
    ensure!(t.data_type == 1, "tensor {} is not float32", t.name);
    if !t.float_data.is_empty() {
        return Ok(t.float_data.clone());
    }
    ensure!(t.raw_data.len().is_multiple_of(4), "tensor {} has truncated raw data", t.name);
    Ok(t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Import, calibrate and quantize an ONNX model.
pub fn import_onnx(path: &Path, train: &Split, calibration: usize) -> Result<QModel> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    crate::quantize::quantize_net(&parse(&bytes)?, train, calibration)
}
