//! Helpers shared by the cross-crate tests: the TFLM reference vectors (copied from
//! `../shared/testvectors/`, see `tests/data/README.md`) and the model they describe.

use std::path::{Path, PathBuf};

use lepton::lpk::{Activation, QLayer, QModel, QOp, QParams, Weights, Window};
use lepton_nn::{Padding, Shape};
use serde_json::Value;

pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// `../shared/<sub>` beside the repository (the team's reference data, e.g. the MLPerf Tiny
/// models), when present. On a user's clone it is absent: the test is skipped with a message.
/// Under CI (`CI` set) it must be there, and its absence fails the test.
pub fn shared_data(sub: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared")
        .join(sub);
    if dir.exists() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing, and CI is set: CI must provide ../shared/{sub}",
            dir.display()
        );
    }
    eprintln!(
        "skipped: {} not found (the team's reference data beside the repository)",
        dir.display()
    );
    None
}

/// The parsed `tflm_mnist_int8_vectors.json`.
pub fn vectors() -> Value {
    let text = std::fs::read_to_string(data_dir().join("tflm_mnist_int8_vectors.json"))
        .expect("test vectors present");
    serde_json::from_str(&text).expect("test vectors parse")
}

pub fn tflite_bytes() -> Vec<u8> {
    std::fs::read(data_dir().join("mnist_cnn_int8_b1.tflite")).expect("tflite model present")
}

pub fn f32_of(v: &Value) -> f32 {
    let hex = v["f32_bits_hex"].as_str().expect("f32_bits_hex");
    f32::from_bits(u32::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex"))
}

pub fn ints<T: TryFrom<i64>>(v: &Value) -> Vec<T> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| {
            T::try_from(x.as_i64().expect("integer"))
                .ok()
                .expect("in range")
        })
        .collect()
}

fn shape_of(v: &Value) -> Shape {
    let d: Vec<u16> = ints(v);
    match d.as_slice() {
        [1, h, w, c] => Shape::new(*h, *w, *c),
        [1, n] => Shape::new(1, 1, *n),
        other => panic!("unexpected shape {other:?}"),
    }
}

fn qparams(layer: &Value, which: &str) -> QParams {
    QParams {
        scale: f32_of(&layer[format!("{which}_scale")]),
        zero_point: layer[format!("{which}_zero_point")].as_i64().unwrap() as i32,
    }
}

fn activation(layer: &Value) -> Activation {
    match layer["fused_activation"].as_str() {
        Some("RELU") => Activation::Relu,
        Some("NONE") | None => Activation::None,
        other => panic!("unexpected activation {other:?}"),
    }
}

fn window(layer: &Value, kernel: (u8, u8)) -> Window {
    let stride: Vec<u8> = ints(&layer["stride_hw"]);
    Window {
        kernel_h: kernel.0,
        kernel_w: kernel.1,
        stride_h: stride[0],
        stride_w: stride[1],
        padding: if layer["padding"] == "SAME" {
            Padding::Same
        } else {
            Padding::Valid
        },
    }
}

fn weights(layer: &Value) -> Weights {
    Weights {
        values: ints(&layer["weights_int8"]),
        scales: layer["weight_scales_f32_bits_hex"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                f32::from_bits(
                    u32::from_str_radix(h.as_str().unwrap().trim_start_matches("0x"), 16).unwrap(),
                )
            })
            .collect(),
        bias: ints(&layer["bias_int32"]),
    }
}

/// The model of the vectors, built from the JSON's own parameters (independently of the .tflite).
pub fn model_from_vectors(v: &Value) -> QModel {
    let layers = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let op = match l["op"].as_str().unwrap() {
                "CONV_2D" => {
                    let ws: Vec<u8> = ints(&l["weights_shape"]);
                    QOp::Conv2d {
                        window: window(l, (ws[1], ws[2])),
                        weights: weights(l),
                        activation: activation(l),
                    }
                }
                "MAX_POOL_2D" => {
                    let f: Vec<u8> = ints(&l["filter_hw"]);
                    QOp::MaxPool2d {
                        window: window(l, (f[0], f[1])),
                        activation: activation(l),
                    }
                }
                "RESHAPE" => QOp::Reshape,
                "FULLY_CONNECTED" => QOp::FullyConnected {
                    weights: weights(l),
                    activation: activation(l),
                },
                "SOFTMAX" => QOp::Softmax {
                    beta: l["beta"].as_f64().unwrap() as f32,
                },
                other => panic!("unexpected op {other}"),
            };
            QLayer {
                op,
                output_shape: shape_of(&l["output_shape_nhwc"]),
                output: qparams(l, "output"),
            }
        })
        .collect();
    QModel::chain(
        shape_of(&v["layers"][0]["input_shape_nhwc"]),
        QParams {
            scale: f32_of(&v["input_quantization"]["scale"]),
            zero_point: v["input_quantization"]["zero_point"].as_i64().unwrap() as i32,
        },
        layers,
    )
}
