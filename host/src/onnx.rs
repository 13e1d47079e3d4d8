//! ONNX with tract-onnx: export the trained float model as a standard ONNX file (opset 13), and
//! run an ONNX model as a second float reference, independent of burn.
//!
//! tract code lives here only: its prelude's `Tensor` would clash with burn's.

use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use tract_onnx::prelude::*;

use crate::data::Split;
use crate::float::export::FloatCnn;

pub const OPSET: i64 = 13;

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v, ..Default::default() }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn initializer(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto { name: name.into(), dims: dims.to_vec(), data_type: DataType::Float as i32, float_data: values.to_vec(), ..Default::default() }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                None => tensor_shape_proto::dimension::Value::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The seed CNN as ONNX (NCHW input `input` [N, 1, 28, 28] in [0, 1], output `logits` [N, 10]).
/// The flatten is preceded by a transpose to NHWC, as the model was trained (and as Keras does).
pub fn export(cnn: &FloatCnn) -> Result<Vec<u8>> {
    ensure!(cnn.convs.len() == 3 && cnn.dense.len() == 2, "not the seed CNN");
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut x = "input".to_string();
    for (i, c) in cnn.convs.iter().enumerate() {
        let (w, b) = (format!("conv{}.weight", i + 1), format!("conv{}.bias", i + 1));
        let k = c.kernel as i64;
        inits.push(initializer(&w, &[c.out_c as i64, c.in_c as i64, k, k], &c.weights_oihw));
        inits.push(initializer(&b, &[c.out_c as i64], &c.bias));
        let conv = format!("conv{}", i + 1);
        nodes.push(node("Conv", &[&x, &w, &b], &conv, vec![ints_attr("kernel_shape", &[k, k]), ints_attr("strides", &[1, 1]), ints_attr("pads", &[0, 0, 0, 0])]));
        let relu = format!("relu{}", i + 1);
        nodes.push(node("Relu", &[&conv], &relu, vec![]));
        x = relu;
        if i < 2 {
            let pool = format!("pool{}", i + 1);
            nodes.push(node("MaxPool", &[&x], &pool, vec![ints_attr("kernel_shape", &[2, 2]), ints_attr("strides", &[2, 2])]));
            x = pool;
        }
    }
    nodes.push(node("Transpose", &[&x], "nhwc", vec![ints_attr("perm", &[0, 2, 3, 1])]));
    nodes.push(node("Flatten", &["nhwc"], "flat", vec![int_attr("axis", 1)]));
    x = "flat".into();
    for (i, d) in cnn.dense.iter().enumerate() {
        let (w, b) = (format!("fc{}.weight", i + 1), format!("fc{}.bias", i + 1));
        inits.push(initializer(&w, &[d.outputs as i64, d.inputs as i64], &d.weights_out_in));
        inits.push(initializer(&b, &[d.outputs as i64], &d.bias));
        let gemm = if i + 1 == cnn.dense.len() { "logits".to_string() } else { format!("fc{}", i + 1) };
        nodes.push(node("Gemm", &[&x, &w, &b], &gemm, vec![int_attr("transB", 1)]));
        x = gemm;
        if i + 1 < cnn.dense.len() {
            let relu = format!("relu_fc{}", i + 1);
            nodes.push(node("Relu", &[&x], &relu, vec![]));
            x = relu;
        }
    }
    let model = ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "lepton".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            name: "mnist_cnn".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info("input", &[None, Some(1), Some(28), Some(28)])],
            output: vec![value_info("logits", &[None, Some(10)])],
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

/// The graph input that is not an initializer, with its dimensions (-1 for symbolic ones).
pub fn graph_input(graph: &GraphProto) -> Result<(&ValueInfoProto, Vec<i64>)> {
    use tensor_shape_proto::dimension::Value;
    let input = graph.input.iter().find(|i| !graph.initializer.iter().any(|t| t.name == i.name)).context("ONNX graph has no input")?;
    let Some(type_proto::Value::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        bail!("ONNX input {} is not a tensor", input.name);
    };
    let dims = t.shape.as_ref().map(|s| s.dim.iter().map(|d| match d.value { Some(Value::DimValue(v)) => v, _ => -1 }).collect()).unwrap_or_default();
    Ok((input, dims))
}

/// An ONNX model loaded and optimized by tract, run one 28x28 image at a time (pixels scaled to
/// [0, 1], in the layout the model's input declares: NCHW `[1,1,28,28]` or NHWC `[1,28,28,1]`).
pub struct TractRunner {
    plan: std::sync::Arc<TypedRunnableModel>,
    shape: [usize; 4],
}

impl TractRunner {
    /// Load `path`; `outputs` names the tensors to read (default: the graph's outputs).
    pub fn load(path: &Path, outputs: Option<&[&str]>) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_bytes(&bytes, path, outputs)
    }

    /// [`TractRunner::load`] of a file already read (`path` names it in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path, outputs: Option<&[&str]>) -> Result<Self> {
        let proto = ModelProto::decode(bytes).map_err(|e| anyhow!("{}: not an ONNX model: {e}", path.display()))?;
        let (_, dims) = graph_input(proto.graph.as_ref().context("ONNX model has no graph")?)?;
        let shape: [usize; 4] = if dims.last() == Some(&1) && dims.get(1) != Some(&1) { [1, 28, 28, 1] } else { [1, 1, 28, 28] };
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(|e| anyhow!("{e:?}"))
            .with_context(|| format!("loading {} with tract-onnx", path.display()))?;
        if let Some(names) = outputs {
            let outlets = names.iter().map(|n| model.find_outlet_label(n).with_context(|| format!("tensor {n} not found by tract"))).collect::<Result<Vec<_>>>()?;
            model = model.with_output_outlets(&outlets).map_err(|e| anyhow!("{e:?}"))?;
        }
        let plan = model
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| anyhow!("{e:?}"))
            .with_context(|| format!("preparing {} with tract-onnx", path.display()))?;
        Ok(TractRunner { plan, shape })
    }

    /// Every output of the model for one image, flattened.
    pub fn run(&self, image: &[u8]) -> Result<Vec<Vec<f32>>> {
        let pixels: Vec<f32> = image.iter().map(|&p| p as f32 / 255.0).collect();
        let input = Tensor::from_shape(&self.shape, &pixels).map_err(|e| anyhow!("{e:?}"))?;
        let outputs = self.plan.run(tvec!(input.into())).map_err(|e| anyhow!("{e:?}"))?;
        outputs.iter().map(|o| Ok(o.to_plain_array_view::<f32>().map_err(|e| anyhow!("{e:?}"))?.iter().copied().collect())).collect()
    }
}

/// Float logits of every image of `split` with tract running the ONNX model at `path`. When the
/// graph ends with a Softmax, its input (the logits) is read instead of the probabilities.
pub fn float_logits(path: &Path, split: &Split) -> Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let proto = ModelProto::decode(&bytes[..]).map_err(|e| anyhow!("{}: not an ONNX model: {e}", path.display()))?;
    let logits = proto.graph.as_ref().and_then(|g| g.node.last()).filter(|n| n.op_type == "Softmax").and_then(|n| n.input.first().cloned());
    let names: Option<[&str; 1]> = logits.as_deref().map(|n| [n]);
    let runner = TractRunner::load(path, names.as_ref().map(|n| &n[..]))?;
    let progress = crate::progress::bar(split.len() as u64, "tract float");
    let mut out = Vec::with_capacity(split.len());
    for i in 0..split.len() {
        out.push(runner.run(split.image(i))?.swap_remove(0));
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(out)
}
