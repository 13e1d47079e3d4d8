//! `lepton export-onnx`: a float network as a standard ONNX file (opset 13).

use anyhow::{ensure, Result};
use lepton_nn::Padding;
use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::float_net::{Act, FloatLayer, FloatNet, FloatOp};

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

/// Append `node` then, when `act` is not `None`, its activation (Relu, or Clip to [0, 6]);
/// the last node writes `name`.
fn with_activation(nodes: &mut Vec<NodeProto>, inits: &mut Vec<TensorProto>, op: &str, inputs: &[&str], name: &str, attrs: Vec<AttributeProto>, act: Act) {
    let pre = if act == Act::None { name.to_string() } else { format!("{name}_pre") };
    nodes.push(node(op, inputs, &pre, attrs));
    match act {
        Act::None => {}
        Act::Relu => nodes.push(node("Relu", &[&pre], name, vec![])),
        Act::Relu6 => {
            let (lo, hi) = (format!("{name}_min"), format!("{name}_max"));
            inits.push(initializer(&lo, &[], &[0.0]));
            inits.push(initializer(&hi, &[], &[6.0]));
            nodes.push(node("Clip", &[&pre, &lo, &hi], name, vec![]));
        }
    }
}

fn window_attrs(kernel: (usize, usize), stride: (usize, usize), padding: Padding) -> Vec<AttributeProto> {
    let mut attrs = vec![ints_attr("kernel_shape", &[kernel.0 as i64, kernel.1 as i64]), ints_attr("strides", &[stride.0 as i64, stride.1 as i64])];
    match padding {
        Padding::Valid => attrs.push(ints_attr("pads", &[0, 0, 0, 0])),
        Padding::Same => attrs.push(AttributeProto { name: "auto_pad".into(), r#type: AttributeType::String as i32, s: b"SAME_UPPER".to_vec(), ..Default::default() }),
    }
    attrs
}

/// A float network as ONNX: NCHW input `input` `[N, C, H, W]` in the network's input range,
/// output `logits` (`[N, K]`, the input of a final softmax, which is left out). A flatten is
/// preceded by a transpose to NHWC, as the network reads its buffers (and as Keras does).
pub fn export(net: &FloatNet) -> Result<Vec<u8>> {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let layers = match net.layers.last() {
        Some(FloatLayer { op: FloatOp::Softmax, .. }) => &net.layers[..net.layers.len() - 1],
        _ => &net.layers[..],
    };
    ensure!(!layers.is_empty(), "the network has no layers to export");
    let out_dims = net.shapes()?[layers.len()];
    let name = |t: usize| if t == 0 { "input".to_string() } else if t == layers.len() { "logits".to_string() } else { format!("t{t}_{}", layers[t - 1].output_name) };
    for (i, layer) in layers.iter().enumerate() {
        let out = name(i + 1);
        let ins: Vec<String> = layer.inputs.iter().map(|&t| name(t)).collect();
        let x = ins[0].as_str();
        match &layer.op {
            FloatOp::Conv { weights_oihw, bias, in_c, out_c, groups, kernel, stride, padding, act } => {
                let (w, b) = (format!("l{i}.weight"), format!("l{i}.bias"));
                inits.push(initializer(&w, &[*out_c as i64, (*in_c / *groups) as i64, kernel.0 as i64, kernel.1 as i64], weights_oihw));
                inits.push(initializer(&b, &[*out_c as i64], bias));
                let mut attrs = window_attrs(*kernel, *stride, *padding);
                attrs.push(int_attr("group", *groups as i64));
                with_activation(&mut nodes, &mut inits, "Conv", &[x, &w, &b], &out, attrs, *act);
            }
            FloatOp::Pool { max, kernel, stride, padding } => {
                let op = if *max { "MaxPool" } else { "AveragePool" };
                nodes.push(node(op, &[x], &out, window_attrs(*kernel, *stride, *padding)));
            }
            FloatOp::Pad { pads } => {
                let p = format!("l{i}.pads");
                let [t, bo, l, r] = pads.map(|v| v as i64);
                inits.push(TensorProto { name: p.clone(), dims: vec![8], data_type: DataType::Int64 as i32, int64_data: vec![0, 0, t, l, 0, 0, bo, r], ..Default::default() });
                nodes.push(node("Pad", &[x, &p], &out, vec![]));
            }
            FloatOp::Add { act } => with_activation(&mut nodes, &mut inits, "Add", &[x, &ins[1]], &out, vec![], *act),
            FloatOp::Flatten => {
                let nhwc = format!("l{i}_nhwc");
                nodes.push(node("Transpose", &[x], &nhwc, vec![ints_attr("perm", &[0, 2, 3, 1])]));
                nodes.push(node("Flatten", &[&nhwc], &out, vec![int_attr("axis", 1)]));
            }
            FloatOp::Dense { weights_out_in, bias, inputs, outputs, act } => {
                let (w, b) = (format!("l{i}.weight"), format!("l{i}.bias"));
                inits.push(initializer(&w, &[*outputs as i64, *inputs as i64], weights_out_in));
                inits.push(initializer(&b, &[*outputs as i64], bias));
                with_activation(&mut nodes, &mut inits, "Gemm", &[x, &w, &b], &out, vec![int_attr("transB", 1)], *act);
            }
            FloatOp::Softmax => nodes.push(node("Softmax", &[x], &out, vec![int_attr("axis", -1)])),
        }
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
