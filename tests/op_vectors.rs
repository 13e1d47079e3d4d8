//! Ops the MLPerf Tiny models do not exercise — SAME padding with stride 2 on odd sizes, RELU6,
//! depth multiplier 2, PAD, MEAN (keep_dims and not), MAX_POOL with SAME padding, ADD with RELU
//! of a fanned-out input, AVERAGE_POOL with partial windows — against TensorFlow Lite Micro:
//! small TFLite models and TFLM's outputs in `tests/data/ops/` (made by
//! `tests/data/ops/make_op_models.py`, provenance in its README).

use lepton::eval::run_inputs;
use lepton::import::tflite::import_tflite;
use lepton::npy::read_i8;
use lepton_tests::data_dir;

#[test]
fn op_models_are_bit_exact_with_tflm() {
    let dir = data_dir().join("ops");
    for name in [
        "conv_same_s2",
        "dw_mult2",
        "pad_conv",
        "mean_hw",
        "mean_hw_flat",
        "add_relu",
    ] {
        let tflite = std::fs::read(dir.join(format!("{name}.tflite"))).unwrap();
        let blob = import_tflite(&tflite)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"))
            .to_lpk()
            .unwrap();
        let inputs = read_i8(&dir.join(format!("{name}.inputs.npy"))).unwrap();
        let logits = read_i8(&dir.join(format!("{name}.logits.npy"))).unwrap();
        let outputs = read_i8(&dir.join(format!("{name}.outputs.npy"))).unwrap();
        for optimized in [false, true] {
            let got = run_inputs(&blob, &inputs.values, optimized).unwrap();
            assert_eq!(got.logits.len(), 16, "{name}");
            assert_eq!(
                got.logits.concat(),
                logits.values,
                "{name} (optimized: {optimized}): logits differ from TFLM"
            );
            assert_eq!(
                got.outputs.concat(),
                outputs.values,
                "{name} (optimized: {optimized}): outputs differ from TFLM"
            );
        }
    }
}
