//! `lepton import`: models made elsewhere into Lepton models. A TFLite full-integer model is
//! taken as it is quantized ([`tflite`]); a float ONNX model is calibrated and quantized like a
//! `lepton train` model ([`onnx`]).

pub mod onnx;
pub mod tflite;

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::data::{self, Part};
use crate::lpk::QModel;

/// The kinds of model file `lepton import` reads, by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Tflite,
    Onnx,
}

impl ModelKind {
    /// The kind of `path`, or an error naming the extensions Lepton reads.
    pub fn of(path: &Path) -> Result<ModelKind> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("tflite") => Ok(ModelKind::Tflite),
            Some("onnx") => Ok(ModelKind::Onnx),
            _ => bail!("{}: unknown model type (expected a .tflite or .onnx file)", path.display()),
        }
    }
}

/// Import `path`; an ONNX model is calibrated on `calibration` training images from `data_dir`.
/// The file is checked before any data is fetched.
pub fn import(path: &Path, data_dir: Option<&Path>, calibration: usize) -> Result<QModel> {
    let kind = ModelKind::of(path)?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let model = match kind {
        ModelKind::Tflite => tflite::import_tflite(&bytes),
        ModelKind::Onnx => {
            let net = onnx::parse(&bytes)?;
            let train = data::load_part(data_dir, Part::Train)?;
            crate::quantize::quantize_net(&net, &train, calibration)
        }
    };
    model.with_context(|| format!("importing {}", path.display()))
}
