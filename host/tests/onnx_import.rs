//! ONNX in: the project's own export (NHWC flatten via Transpose, as Keras/tf2onnx emit) and a
//! small NCHW model written here (PyTorch's layout, MatMul + Add, Softmax) are imported,
//! calibrated, quantized and evaluated end to end; unsupported graphs are clear errors.

mod common;

use std::path::Path;

use common::{lepton, ok, s};
use prost::Message;
use tract_onnx::pb::*;

fn floats(name: &str, dims: &[i64], seed: u32) -> TensorProto {
    let n: i64 = dims.iter().product();
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let values = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 2001) as f32 / 1000.0 - 1.0
        })
        .map(|v| v * 0.3)
        .collect();
    TensorProto { name: name.into(), dims: dims.to_vec(), data_type: 1, float_data: values, ..Default::default() }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto { op_type: op.into(), name: output.into(), input: inputs.iter().map(|s| s.to_string()).collect(), output: vec![output.into()], attribute, ..Default::default() }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: 7, ints: v.to_vec(), ..Default::default() }
}

fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value, Dimension};
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto { dim: dims.iter().map(|&d| Dimension { value: Some(Value::DimValue(d)), ..Default::default() }).collect() }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A tf2onnx-style model: NHWC input, Transpose to NCHW for the Conv, Transpose back to NHWC
/// before the Flatten, Gemm with transB.
fn nhwc_model() -> Vec<u8> {
    let attr_i = |name: &str, i: i64| AttributeProto { name: name.into(), r#type: 2, i, ..Default::default() };
    let nodes = vec![
        node("Transpose", &["input"], "nchw", vec![ints("perm", &[0, 3, 1, 2])]),
        node("Conv", &["nchw", "w1", "b1"], "c1", vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2])]),
        node("Relu", &["c1"], "r1", vec![]),
        node("Transpose", &["r1"], "nhwc", vec![ints("perm", &[0, 2, 3, 1])]),
        node("Flatten", &["nhwc"], "f", vec![attr_i("axis", 1)]),
        node("Gemm", &["f", "w2", "b2"], "logits", vec![attr_i("transB", 1)]),
    ];
    let graph = GraphProto {
        name: "nhwc".into(),
        node: nodes,
        initializer: vec![floats("w1", &[6, 1, 3, 3], 5), floats("b1", &[6], 6), floats("w2", &[10, 13 * 13 * 6], 7), floats("b2", &[10], 8)],
        input: vec![value("input", &[1, 28, 28, 1])],
        output: vec![value("logits", &[1, 10])],
        ..Default::default()
    };
    ModelProto { ir_version: 7, opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 13 }], graph: Some(graph), ..Default::default() }.encode_to_vec()
}

/// A small PyTorch-style NCHW CNN: Conv(4,3x3) - Relu - MaxPool 2 - Flatten (NCHW order) -
/// MatMul + Add - Softmax, with fixed pseudo-random weights; `extra` nodes are appended.
fn nchw_model(extra_op: Option<&str>) -> Vec<u8> {
    let mut nodes = vec![
        node("Conv", &["input", "w1", "b1"], "c1", vec![ints("kernel_shape", &[3, 3])]),
        node("Relu", &["c1"], "r1", vec![]),
        node("MaxPool", &["r1"], "p1", vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])]),
        node("Flatten", &["p1"], "f", vec![]),
        node("MatMul", &["f", "w2"], "m", vec![]),
        node("Add", &["m", "b2"], "logits", vec![]),
    ];
    let mut last = "logits".to_string();
    if let Some(op) = extra_op {
        nodes.push(node(op, &["logits"], "extra", vec![]));
        last = "extra".into();
    }
    nodes.push(node("Softmax", &[&last], "probs", vec![]));
    let graph = GraphProto {
        name: "nchw".into(),
        node: nodes,
        initializer: vec![floats("w1", &[4, 1, 3, 3], 1), floats("b1", &[4], 2), floats("w2", &[4 * 13 * 13, 10], 3), floats("b2", &[10], 4)],
        input: vec![value("input", &[1, 1, 28, 28])],
        output: vec![value("probs", &[1, 10])],
        ..Default::default()
    };
    ModelProto { ir_version: 7, opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 13 }], graph: Some(graph), ..Default::default() }.encode_to_vec()
}

fn eval(lpk: &Path, float: &Path, images: &str) -> serde_json::Value {
    serde_json::from_str(&ok(lepton(&["eval", "--model", s(lpk), "--float", s(float), "--json", "--images", images]))).unwrap()
}

/// On 1,000 images an imported untrained model's int8 picks float's class at least 90% of the
/// time and its mean logit error stays under one output step.
fn int8_follows_float(lpk: &Path, onnx: &Path) {
    let r = eval(lpk, onnx, "1000");
    assert!(r["agreement"].as_f64().unwrap() >= 0.9, "{r}");
    assert!(r["mean_logit_error"].as_f64().unwrap() <= r["logit_scale"].as_f64().unwrap(), "{r}");
}

#[test]
fn the_projects_own_export_imports_and_quantizes() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("mnist.onnx");
    let lpk = dir.path().join("mnist.lpk");
    ok(lepton(&["export-onnx", "--float", "models/mnist-cnn", "--out", s(&onnx)]));
    ok(lepton(&["import", s(&onnx), "--out", s(&lpk), "--calibration", "300"]));
    let r = eval(&lpk, &onnx, "2000");
    assert!(r["int8_accuracy"].as_f64().unwrap() > 0.98, "{r}");
    assert!(r["agreement"].as_f64().unwrap() >= 0.995, "{r}");
}

#[test]
fn a_pytorch_style_nchw_model_imports_and_quantizes() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("nchw.onnx");
    let lpk = dir.path().join("nchw.lpk");
    std::fs::write(&onnx, nchw_model(None)).unwrap();
    ok(lepton(&["import", s(&onnx), "--out", s(&lpk), "--calibration", "200"]));
    let report: serde_json::Value = serde_json::from_str(&ok(lepton(&["report", "--model", s(&lpk), "--json"]))).unwrap();
    let ops: Vec<&str> = report["layers"].as_array().unwrap().iter().map(|l| l["op"].as_str().unwrap()).collect();
    // The Flatten moves no data in NHWC: the dense layer reads the pooled tensor directly.
    assert_eq!(ops, ["conv2d", "max_pool2d", "fully_connected", "softmax"]);
    // An untrained model: what matters is that int8 follows float (a wrong NCHW->NHWC
    // permutation of the dense weights would leave ~10% agreement).
    int8_follows_float(&lpk, &onnx);
}

#[test]
fn a_tf2onnx_style_nhwc_model_imports_and_quantizes() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("nhwc.onnx");
    let lpk = dir.path().join("nhwc.lpk");
    std::fs::write(&onnx, nhwc_model()).unwrap();
    ok(lepton(&["import", s(&onnx), "--out", s(&lpk), "--calibration", "200"]));
    int8_follows_float(&lpk, &onnx);
}

#[test]
fn unsupported_graphs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("sigmoid.onnx");
    std::fs::write(&onnx, nchw_model(Some("Sigmoid"))).unwrap();
    let out = lepton(&["import", s(&onnx), "--out", s(&dir.path().join("x.lpk"))]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("unsupported ONNX op Sigmoid (node extra)"), "{e}");
    std::fs::write(&onnx, b"not protobuf at all \xff\xff").unwrap();
    let out = lepton(&["import", s(&onnx), "--out", s(&dir.path().join("x.lpk"))]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("not an ONNX model"), "{e}");
    assert!(!dir.path().join("x.lpk").exists());
}
