//! ONNX files written by real exporters (`torch.onnx.export` with a dynamic batch, tf2onnx from
//! Keras), committed with the frameworks' own outputs in `tests/data/onnx/` (made by
//! `tests/data/onnx/make_onnx_models.py`; provenance in its README): tract's float output and
//! Lepton's converted network both equal the framework's; the int8 models stay within their
//! accuracy budget of float on MNIST; unsupported graphs name the op and the node.

mod common;

use std::path::PathBuf;

use common::{err, lepton, ok, s};
use lepton::import::onnx::parse;
use lepton::npy::read_f32;
use lepton::onnx::TractRunner;

fn data(name: &str) -> PathBuf {
    common::root().join("tests/data/onnx").join(name)
}

const MNIST_MODELS: [(&str, f64); 4] = [("torch_seed_cnn", 0.002), ("keras_seed_cnn", 0.002), ("torch_dscnn_block", 0.005), ("torch_resnet_block", 0.005)];
const ALL: [&str; 5] = ["torch_seed_cnn", "keras_seed_cnn", "torch_dscnn_block", "torch_resnet_block", "keras_nhwc_rgb"];

fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(data("manifest.json")).unwrap()).unwrap()
}

/// The framework's recorded outputs, rows of `K`.
fn recorded(name: &str) -> (lepton::npy::Array<f32>, lepton::npy::Array<f32>) {
    (read_f32(&data(&format!("{name}.inputs.npy"))).unwrap(), read_f32(&data(&format!("{name}.outputs.npy"))).unwrap())
}

#[test]
fn tract_reproduces_each_framework_within_1e_4() {
    for name in ALL {
        let runner = TractRunner::load(&data(&format!("{name}.onnx")), None).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let (x, y) = recorded(name);
        let (n, per, k) = (x.shape[0], x.values.len() / x.shape[0], y.values.len() / y.shape[0]);
        let mut worst = 0f32;
        for i in 0..n {
            let got = runner.run_input(&x.values[i * per..(i + 1) * per]).unwrap().swap_remove(0);
            for (a, b) in got.iter().zip(&y.values[i * k..(i + 1) * k]) {
                worst = worst.max((a - b).abs());
            }
        }
        assert!(worst <= 1e-4, "{name}: tract differs from the framework by {worst}");
    }
}

#[test]
fn lepton_converts_each_graph_to_the_same_function() {
    for name in ALL {
        let imported = parse(&std::fs::read(data(&format!("{name}.onnx"))).unwrap()).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let (x, y) = recorded(name);
        let (n, per, k) = (x.shape[0], x.values.len() / x.shape[0], y.values.len() / y.shape[0]);
        let mut worst = 0f64;
        for i in 0..n {
            let out = imported.net.forward(&imported.to_storage(&x.values[i * per..(i + 1) * per])).unwrap();
            let last = &out.last().unwrap().values;
            assert_eq!(last.len(), k, "{name}: output size");
            for (a, b) in last.iter().zip(&y.values[i * k..(i + 1) * k]) {
                worst = worst.max((a - *b as f64).abs());
            }
        }
        assert!(worst <= 1e-4, "{name}: Lepton's float network differs from the framework by {worst}");
    }
}

#[test]
fn int8_models_stay_within_their_accuracy_budget_on_mnist() {
    for (name, budget) in MNIST_MODELS {
        within_budget(name, budget);
    }
}

fn within_budget(name: &str, budget: f64) {
    let dir = tempfile::tempdir().unwrap();
    let onnx = data(&format!("{name}.onnx"));
    let lpk = dir.path().join(format!("{name}.lpk"));
    ok(lepton(&["import", s(&onnx), "--out", s(&lpk)]));
    let r: serde_json::Value = serde_json::from_str(&ok(lepton(&["eval", "--model", s(&lpk), "--float", s(&onnx), "--json"]))).unwrap();
    let (int8, float) = (r["int8_accuracy"].as_f64().unwrap(), r["float_accuracy"].as_f64().unwrap());
    assert_eq!(r["images"], 10_000);
    // The framework's own test accuracy (manifest.json) on the same 10,000 images: Lepton's
    // float reference must reproduce it (a few borderline argmaxes may flip).
    let framework = manifest()["models"][name]["test_accuracy"].as_f64().unwrap();
    assert!((float - framework).abs() <= 0.0005, "{name}: float {float} vs the framework's {framework}: {r}");
    assert!(int8 >= float - budget, "{name}: int8 {int8} vs float {float} (budget {budget}): {r}");
}

/// A model that does not take MNIST images is calibrated on `--calibration-inputs` and says so
/// when they are missing.
#[test]
fn other_input_shapes_calibrate_on_given_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = data("keras_nhwc_rgb.onnx");
    let lpk = dir.path().join("rgb.lpk");
    let e = err(lepton(&["import", s(&onnx), "--out", s(&lpk)]));
    assert!(e.contains("16x16x3 inputs") && e.contains("--calibration-inputs"), "{e}");
    ok(lepton(&["import", s(&onnx), "--out", s(&lpk), "--calibration-inputs", s(&data("keras_nhwc_rgb.calibration.npy"))]));
    let report: serde_json::Value = serde_json::from_str(&ok(lepton(&["report", "--model", s(&lpk), "--json"]))).unwrap();
    let ops: Vec<&str> = report["layers"].as_array().unwrap().iter().map(|l| l["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["conv2d", "depthwise_conv2d", "conv2d", "mean", "fully_connected"]);
}

#[test]
fn unsupported_ops_name_the_op_and_the_node() {
    let dir = tempfile::tempdir().unwrap();
    // torch_seed_cnn with its first Relu turned into a Sigmoid.
    let mut bytes = std::fs::read(data("torch_seed_cnn.onnx")).unwrap();
    // The node's op_type field (tag 4, length 4), not the "Relu" inside tensor names.
    let at = bytes.windows(6).position(|w| w == b"\"\x04Relu").expect("a Relu node") + 2;
    bytes[at..at + 4].copy_from_slice(b"Tanh");
    let onnx = dir.path().join("tanh.onnx");
    std::fs::write(&onnx, &bytes).unwrap();
    let e = err(lepton(&["import", s(&onnx), "--out", s(&dir.path().join("x.lpk"))]));
    assert!(e.contains("unsupported ONNX op Tanh (node /"), "{e}");
    assert!(!dir.path().join("x.lpk").exists());
}
