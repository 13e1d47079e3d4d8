//! The float model an int8 model is judged against: a `lepton train` directory (burn) or an
//! `.onnx` file (tract, an engine independent of burn).

use std::path::Path;

use anyhow::Result;

use crate::data::Split;

/// Float logits of every image in `split`.
pub fn float_logits(float_model: &Path, split: &Split) -> Result<Vec<Vec<f32>>> {
    if float_model.extension().is_some_and(|e| e == "onnx") {
        return crate::onnx::float_logits(float_model, split);
    }
    let device = crate::train::device()?;
    let model = crate::train::infer::load(float_model, &device)?;
    Ok(crate::train::infer::logits(&model, split, &device))
}

/// `lepton export-onnx`: the float model in a `lepton train` directory as ONNX bytes.
pub fn export_onnx(float_dir: &Path) -> Result<Vec<u8>> {
    crate::onnx::export(&crate::train::load_float_net(float_dir)?)
}
