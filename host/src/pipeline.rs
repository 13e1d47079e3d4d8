//! The steps that tie the float model (burn) to the integer one: quantize a trained model,
//! compute float logits for comparison.

use std::path::Path;

use anyhow::Result;

use crate::data::{self, Part, Split};
use crate::float;

/// `lepton quantize`: load the float model in `float_dir`, calibrate on `calibration` training
/// images, and quantize.
pub fn quantize(float_dir: &Path, data_dir: Option<&Path>, calibration: usize) -> Result<crate::qmodel::QModel> {
    let device = float::device()?;
    let model = float::infer::load(float_dir, &device)?;
    let train = data::load_part(data_dir, Part::Train)?;
    eprintln!("calibrating on {} training images ...", calibration.min(train.len()));
    let ranges = float::calibrate::activation_ranges(&model, &train, calibration, &device);
    crate::quantize::quantize_cnn(&float::export::FloatCnn::from_model(&model), &ranges)
}

/// Float logits of every image in `split` from a float model: a `lepton train` directory (burn)
/// or an `.onnx` file (tract, an engine independent of burn).
pub fn float_logits(float_dir: &Path, split: &Split) -> Result<Vec<Vec<f32>>> {
    if float_dir.extension().is_some_and(|e| e == "onnx") {
        return crate::onnx::float_logits(float_dir, split);
    }
    let device = float::device()?;
    let model = float::infer::load(float_dir, &device)?;
    Ok(float::infer::logits(&model, split, &device))
}

/// `lepton export-onnx`: the float model in `float_dir` as ONNX bytes.
pub fn export_onnx(float_dir: &Path) -> Result<Vec<u8>> {
    let device = float::device()?;
    let model = float::infer::load(float_dir, &device)?;
    crate::onnx::export(&float::export::FloatCnn::from_model(&model))
}
