//! `lepton export-onnx`: a float network as a standard ONNX file (opset 13).

use anyhow::{ensure, Result};
use lepton_nn::Padding;
use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::float_net::{FloatLayer, FloatNet, FloatOp};

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

/// A float network as ONNX: NCHW input `input` `[N, C, H, W]` in [0, 1], output `logits`
/// (`[N, K]`, the input of a final softmax, which is left out). A flatten is preceded by a
/// transpose to NHWC, as the network reads its buffers (and as Keras does).
pub fn export(net: &FloatNet) -> Result<Vec<u8>> {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut x = "input".to_string();
    let layers = match net.layers.last() {
        Some(FloatLayer { op: FloatOp::Softmax, .. }) => &net.layers[..net.layers.len() - 1],
        _ => &net.layers[..],
    };
    ensure!(!layers.is_empty(), "the network has no layers to export");
    let out_dims = net.shapes()?[layers.len() - 1];
    for (i, layer) in layers.iter().enumerate() {
        let name = if i + 1 == layers.len() { "logits".to_string() } else { format!("l{i}_{}", layer.output_name) };
        match &layer.op {
            FloatOp::Conv { weights_oihw, bias, in_c, out_c, kernel, stride, padding, relu } => {
                let (w, b) = (format!("l{i}.weight"), format!("l{i}.bias"));
                inits.push(initializer(&w, &[*out_c as i64, *in_c as i64, kernel.0 as i64, kernel.1 as i64], weights_oihw));
                inits.push(initializer(&b, &[*out_c as i64], bias));
                let mut attrs = vec![ints_attr("kernel_shape", &[kernel.0 as i64, kernel.1 as i64]), ints_attr("strides", &[stride.0 as i64, stride.1 as i64])];
                match padding {
                    Padding::Valid => attrs.push(ints_attr("pads", &[0, 0, 0, 0])),
                    Padding::Same => attrs.push(AttributeProto { name: "auto_pad".into(), r#type: AttributeType::String as i32, s: b"SAME_UPPER".to_vec(), ..Default::default() }),
                }
                let conv = if *relu { format!("l{i}_conv") } else { name.clone() };
                nodes.push(node("Conv", &[&x, &w, &b], &conv, attrs));
                if *relu {
                    nodes.push(node("Relu", &[&conv], &name, vec![]));
                }
            }
            FloatOp::Pool { max, kernel, stride } => {
                let op = if *max { "MaxPool" } else { "AveragePool" };
                nodes.push(node(op, &[&x], &name, vec![ints_attr("kernel_shape", &[kernel.0 as i64, kernel.1 as i64]), ints_attr("strides", &[stride.0 as i64, stride.1 as i64])]));
            }
            FloatOp::Flatten => {
                let nhwc = format!("l{i}_nhwc");
                nodes.push(node("Transpose", &[&x], &nhwc, vec![ints_attr("perm", &[0, 2, 3, 1])]));
                nodes.push(node("Flatten", &[&nhwc], &name, vec![int_attr("axis", 1)]));
            }
            FloatOp::Dense { weights_out_in, bias, inputs, outputs, relu } => {
                let (w, b) = (format!("l{i}.weight"), format!("l{i}.bias"));
                inits.push(initializer(&w, &[*outputs as i64, *inputs as i64], weights_out_in));
                inits.push(initializer(&b, &[*outputs as i64], bias));
                let gemm = if *relu { format!("l{i}_gemm") } else { name.clone() };
                nodes.push(node("Gemm", &[&x, &w, &b], &gemm, vec![int_attr("transB", 1)]));
                if *relu {
                    nodes.push(node("Relu", &[&gemm], &name, vec![]));
                }
            }
            FloatOp::Softmax => nodes.push(node("Softmax", &[&x], &name, vec![int_attr("axis", -1)])),
        }
        x = name;
    }
    ensure!(out_dims.0 == 1 && out_dims.1 == 1, "the exported network must end with a vector (a dense layer or a flatten)");
    let (h, w, c) = net.input;
    let model = ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "lepton".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            name: "lepton".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info("input", &[None, Some(c as i64), Some(h as i64), Some(w as i64)])],
            output: vec![value_info("logits", &[None, Some(out_dims.2 as i64)])],
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}
