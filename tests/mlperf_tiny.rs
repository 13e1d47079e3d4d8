//! The MLPerf Tiny int8 models (`../shared/mlperf-tiny/`), imported from TFLite, against
//! TensorFlow Lite Micro: logits and outputs bit-exact on all 24 of TFLM's vectors per model,
//! with the reference kernels (the oracle) and the optimized ones. Skipped with a message where
//! the folder is absent (a user's clone); CI has it, and fails without it.

use std::path::Path;

use lepton::eval::run_inputs;
use lepton::import::tflite::import_tflite;
use lepton::npy::read_i8;
use lepton_tests::shared_data;

/// Model file stems and their figures (from the folder's README: MACs, TFLM's arena bytes).
pub const MODELS: [(&str, u64, usize); 5] = [
    ("pretrainedResnet_quant", 12_501_632, 55_984),
    ("kws_ref_model", 2_656_768, 24_272),
    ("vww_96_int8", 7_489_664, 103_672),
    ("ad01_int8", 264_192, 4_632),
    ("str_ww_ref_model", 826_368, 16_640),
];

fn check(dir: &Path, name: &str, macs: u64, tflm_arena: usize) {
    let tflite = std::fs::read(dir.join(format!("{name}.tflite"))).unwrap();
    let blob = import_tflite(&tflite)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"))
        .to_lpk()
        .unwrap();
    let report = lepton::report::report(&blob).unwrap();
    assert_eq!(report.macs, macs, "{name}: MACs");
    // The memory plan is exact: the graph issue's bound (half of TFLM's arena) as a regression
    // check (residual blocks fused row by row, convs written over their inputs).
    assert!(2 * report.arena_bytes <= tflm_arena, "{name}: arena {} B, more than half of TFLM's {tflm_arena} B", report.arena_bytes);
    let vectors = dir.join("vectors");
    let inputs = read_i8(&vectors.join(format!("{name}.inputs.npy"))).unwrap();
    let logits = read_i8(&vectors.join(format!("{name}.logits.npy"))).unwrap();
    let outputs = read_i8(&vectors.join(format!("{name}.outputs.npy"))).unwrap();
    assert_eq!(inputs.shape[0], 24);
    for optimized in [false, true] {
        let which = if optimized { "optimized" } else { "reference" };
        let got = run_inputs(&blob, &inputs.values, optimized).unwrap();
        assert_eq!(got.logits.len(), 24);
        for (i, (l, o)) in got.logits.iter().zip(&got.outputs).enumerate() {
            let k = l.len();
            assert_eq!(
                l.as_slice(),
                &logits.values[i * k..(i + 1) * k],
                "{name} ({which}) input {i}: logits differ from TFLM"
            );
            let k = o.len();
            assert_eq!(
                o.as_slice(),
                &outputs.values[i * k..(i + 1) * k],
                "{name} ({which}) input {i}: outputs differ from TFLM"
            );
        }
    }
}

#[test]
fn every_mlperf_tiny_model_is_bit_exact_with_tflm() {
    let Some(dir) = shared_data("mlperf-tiny") else {
        return;
    };
    for (name, macs, tflm_arena) in MODELS {
        check(&dir, name, macs, tflm_arena);
    }
}
