//! The `lepton` command as a user runs it: import, eval (the 0.9918 acceptance), data handling
//! and the errors for bad input.

mod common;

use std::path::{Path, PathBuf};

use common::{err, lepton, ok, s};

fn tflite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/mnist_cnn_int8_b1.tflite")
}


#[test]
fn imported_tflite_model_scores_0_9918_on_the_mnist_test_set() {
    let dir = tempfile::tempdir().unwrap();
    let lpk = dir.path().join("m.lpk");
    let logits = dir.path().join("logits.json");
    ok(lepton(&["import", s(&tflite()), "--out", s(&lpk)]));
    let out = ok(lepton(&["eval", "--model", s(&lpk), "--json", "--logits", s(&logits)]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["images"], 10_000);
    assert_eq!(report["int8_accuracy"].as_f64().unwrap(), 0.9918);
    let logits: Vec<Vec<i8>> = serde_json::from_str(&std::fs::read_to_string(&logits).unwrap()).unwrap();
    assert_eq!(logits.len(), 10_000);
    assert!(logits.iter().all(|l| l.len() == 10));
    // First test image (a 7), as TFLM computes it.
    assert_eq!(logits[0], [-38, -35, -39, -32, -28, -61, -88, 51, -44, -11]);
}

#[test]
fn corrupt_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let lpk = dir.path().join("m.lpk");
    ok(lepton(&["import", s(&tflite()), "--out", s(&lpk)]));
    let mut bytes = std::fs::read(&lpk).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xFF;
    std::fs::write(&lpk, &bytes).unwrap();
    let e = err(lepton(&["eval", "--model", s(&lpk), "--images", "1"]));
    assert!(e.contains("CRC-32"), "{e}");
    std::fs::write(&lpk, &bytes[..100]).unwrap();
    let e = err(lepton(&["eval", "--model", s(&lpk), "--images", "1"]));
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn import_rejects_what_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.tflite");
    std::fs::write(&bogus, b"definitely not a flatbuffer").unwrap();
    let e = err(lepton(&["import", s(&bogus), "--out", s(&dir.path().join("x.lpk"))]));
    assert!(e.contains("not a TFLite flatbuffer"), "{e}");
    assert!(!dir.path().join("x.lpk").exists(), "nothing written on failure");
    // The extension is checked first: no file is read, no data fetched.
    let e = err(lepton(&["import", "model.pb", "--out", s(&dir.path().join("x.lpk"))]));
    assert!(e.contains("model.pb: unknown model type (expected a .tflite or .onnx file)"), "{e}");
}

/// Write a small IDX data set: `n` images of 28x28 and labels `i % 10`.
fn write_idx(dir: &Path, prefix: &str, n: u32, images_bytes: Option<usize>) {
    let mut images = vec![0, 0, 8, 3];
    for v in [n, 28, 28] {
        images.extend(v.to_be_bytes());
    }
    images.extend((0..n as usize * 784).map(|i| (i % 251) as u8));
    if let Some(len) = images_bytes {
        images.truncate(len);
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend(n.to_be_bytes());
    labels.extend((0..n).map(|i| (i % 10) as u8));
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
}

#[test]
fn any_idx_data_set_in_a_user_directory_is_used() {
    let dir = tempfile::tempdir().unwrap();
    write_idx(dir.path(), "train", 20, None);
    write_idx(dir.path(), "t10k", 7, None);
    assert_eq!(ok(lepton(&["data", "--dir", s(dir.path())])).trim(), s(dir.path()));
    let lpk = dir.path().join("m.lpk");
    ok(lepton(&["import", s(&tflite()), "--out", s(&lpk)]));
    let out = ok(lepton(&["eval", "--model", s(&lpk), "--data", s(dir.path()), "--json"]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["images"], 7);
}

#[test]
fn gzipped_files_are_accepted() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    write_idx(dir.path(), "train", 3, None);
    write_idx(dir.path(), "t10k", 2, None);
    for name in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        let raw = std::fs::read(dir.path().join(name)).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        std::fs::write(dir.path().join(format!("{name}.gz")), gz.finish().unwrap()).unwrap();
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let test = lepton::data::load_part(Some(dir.path()), lepton::data::Part::Test).unwrap();
    assert_eq!(test.len(), 2);
    assert_eq!(test.labels, [0, 1]);
    // A truncated .gz is a clear error.
    let gz = dir.path().join("t10k-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&gz).unwrap();
    std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
    let e = lepton::data::load_part(Some(dir.path()), lepton::data::Part::Test).unwrap_err();
    assert!(format!("{e:#}").contains("corrupt or truncated"), "{e:#}");
}

#[test]
fn truncated_partial_and_mismatched_data_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_idx(dir.path(), "train", 5, None);
    write_idx(dir.path(), "t10k", 5, Some(16 + 3 * 784));
    let e = err(lepton(&["data", "--dir", s(dir.path())]));
    assert!(e.contains("truncated or corrupt") && e.contains("t10k-images"), "{e}");

    let partial = tempfile::tempdir().unwrap();
    write_idx(partial.path(), "t10k", 5, None);
    let e = err(lepton(&["data", "--dir", s(partial.path())]));
    assert!(e.contains("missing") && e.contains("train-images-idx3-ubyte"), "{e}");

    let images = vec![0u8; 16];
    let mut labels = vec![0, 0, 8, 1, 0, 0, 0, 2, 0, 1];
    assert!(lepton::data::parse_split(&images, &labels).is_err());
    labels[9] = 12;
    let mut imgs = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
    imgs.extend(vec![0u8; 2 * 784]);
    let e = lepton::data::parse_split(&imgs, &labels).unwrap_err();
    assert!(e.to_string().contains("label 1 is 12"), "{e}");
}

#[test]
fn flash_without_a_probe_says_so() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/mnist-cnn/int8.lpk");
    let e = err(lepton(&["flash", "--model", s(&model)]));
    assert!(e.contains("no debug probe attached"), "{e}");
    let e = err(lepton(&["flash", "--model", s(&model), "--chip", "NOPE123"]));
    assert!(e.contains("unknown chip"), "{e}");
    let e = err(lepton(&["flash", "--model", s(&model), "--address", "0x20000000"]));
    assert!(e.contains("not in its flash"), "{e}");
    let e = err(lepton(&["flash", "--model", s(&model), "--address", "0x080F8000"]));
    assert!(e.contains("does not fit"), "{e}");
    // The firmware's own sectors only when forced; one-time programmable bytes never.
    let e = err(lepton(&["flash", "--model", s(&model), "--address", "0x08000000"]));
    assert!(e.contains("outside the firmware's model partition") && e.contains("--force-address"), "{e}");
    let e = err(lepton(&["flash", "--model", s(&model), "--address", "0x08000000", "--force-address"]));
    assert!(e.contains("no debug probe attached"), "{e}");
    let e = err(lepton(&["flash", "--model", s(&model), "--address", "0x1FFF7800", "--force-address"]));
    assert!(e.contains("never written"), "{e}");
    let e = err(lepton(&["flash", "--model", s(&tflite())]));
    assert!(e.contains("refusing to flash an invalid model"), "{e}");
}

#[test]
fn counts_of_zero_are_refused() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/mnist-cnn/int8.lpk");
    for args in [
        &["train", "--epochs", "0"][..],
        &["train", "--test-images", "0"],
        &["train", "--train-images", "0"],
        &["train", "--batch-size", "0"],
        &["eval", "--model", s(&model), "--images", "0"],
        &["quantize", "--float", "models/mnist-cnn", "--out", "x.lpk", "--calibration", "0"],
    ] {
        let e = err(lepton(args));
        assert!(e.contains("must be at least 1"), "{args:?}: {e}");
    }
}

#[test]
fn output_paths_must_be_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let e = err(lepton(&["import", s(&tflite()), "--out", s(dir.path())]));
    assert!(e.contains("it is a directory"), "{e}");
    let e = err(lepton(&["import", s(&tflite()), "--out", "/dev/null"]));
    assert!(e.contains("not a regular file"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a temporary file was left behind");
}

#[test]
fn optimized_kernels_match_the_reference_on_all_test_images() {
    let blob = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/mnist-cnn/int8.lpk")).unwrap();
    let test = lepton::data::load_part(None, lepton::data::Part::Test).unwrap();
    let reference = lepton::eval::run_int8_with(&blob, &test, false).unwrap();
    let optimized = lepton::eval::run_int8_with(&blob, &test, true).unwrap();
    assert_eq!(reference.logits.len(), 10_000);
    let differing = reference.logits.iter().zip(&optimized.logits).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "optimized logits differ from the reference on {differing} images");
}

/// `--weights compact` is `int8` (which keeps working) and `--weights fast` is the per-layer
/// choice (Winograd for conv2, int8 for fc1, i16 elsewhere): smaller than `i16`; `lepton report`
/// on any of them states all four points' model bytes exactly (int4 too: two weights a byte).
#[test]
fn fast_and_compact_name_the_points_of_the_weight_trade() {
    let dir = tempfile::tempdir().unwrap();
    let path = |weights: &str| dir.path().join(format!("{weights}.lpk"));
    let quantize = |weights: &str| -> Vec<u8> {
        ok(lepton(&["quantize", "--float", "models/mnist-cnn", "--out", s(&path(weights)), "--calibration", "50", "--weights", weights]));
        std::fs::read(path(weights)).unwrap()
    };
    let (i16, fast, compact, int4) = (quantize("i16"), quantize("fast"), quantize("compact"), quantize("int4"));
    assert_eq!(compact, quantize("int8"));
    assert!(fast.len() < i16.len() && compact.len() < i16.len() * 6 / 10, "i16 {} fast {} compact {}", i16.len(), fast.len(), compact.len());
    assert!(int4.len() < compact.len() * 6 / 10 && int4.len() <= 56_000, "int4 {} compact {}", int4.len(), compact.len());
    let sizes = [i16.len(), fast.len(), compact.len(), int4.len()];
    for (this, weights) in ["i16", "fast", "compact", "int4"].into_iter().enumerate() {
        let report: serde_json::Value = serde_json::from_str(&ok(lepton(&["report", "--model", s(&path(weights)), "--json"]))).unwrap();
        let trade = report["weight_trade"].as_array().unwrap();
        assert_eq!(trade.len(), sizes.len(), "{weights}: {trade:?}");
        for (k, point) in trade.iter().enumerate() {
            assert_eq!(point["model_bytes"], sizes[k], "{weights}: {trade:?}");
            assert_eq!(point["this_model"], k == this, "{weights}: {trade:?}");
        }
    }
}
