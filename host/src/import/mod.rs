//! `lepton import`: models made elsewhere into Lepton models. A TFLite full-integer model is
//! taken as it is quantized ([`tflite`]); a float ONNX model is calibrated and quantized like a
//! `lepton train` model ([`onnx`]).

pub mod onnx;
pub mod tflite;

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

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

/// How `lepton import` calibrates a float (ONNX) model.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    /// Data directory for MNIST-shaped models (default: the cache of `lepton data`).
    pub data_dir: Option<std::path::PathBuf>,
    /// Training images (or inputs) to use.
    pub count: usize,
    /// float32 inputs in the model's own input layout (`N x <input shape>`), for other shapes.
    pub inputs: Option<std::path::PathBuf>,
}

/// Import `path`. The file is read and checked before any data is fetched.
pub fn import(path: &Path, calibration: &Calibration) -> Result<QModel> {
    let kind = ModelKind::of(path)?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let model = match kind {
        ModelKind::Tflite => tflite::import_tflite(&bytes),
        ModelKind::Onnx => onnx::parse(&bytes).and_then(|imported| calibrate_onnx(&imported, calibration)),
    };
    model.with_context(|| format!("importing {}", path.display()))
}

/// Calibrate and quantize an imported ONNX model: on `--calibration-inputs`, or on MNIST
/// training images when the model takes 28x28x1 images.
pub fn calibrate_onnx(imported: &onnx::Imported, calibration: &Calibration) -> Result<QModel> {
    let net = &imported.net;
    if let Some(path) = &calibration.inputs {
        let x = crate::npy::read_f32(path)?;
        let per: usize = imported.input_dims.iter().product();
        let rest: Vec<usize> = imported.input_dims.iter().copied().skip_while(|&d| d == 1).collect();
        let matches = x.shape.first().is_some_and(|&n| n > 0) && x.shape[1..].iter().product::<usize>() == per && x.shape[1..].iter().copied().skip_while(|&d| d == 1).eq(rest.iter().copied());
        ensure!(matches, "{} has shape {:?}; the model takes inputs of shape {:?} (N first)", path.display(), x.shape, imported.input_dims);
        let count = x.shape[0].min(calibration.count.max(1));
        eprintln!("calibrating on {count} inputs of {} (f64 reference forward pass) ...", path.display());
        let ranges = crate::quantize::calibrate::ranges_over(net, count, |k| imported.to_storage(&x.values[k * per..(k + 1) * per]))?;
        return crate::quantize::ptq::quantize_net(net, &ranges);
    }
    if net.input != (data::ROWS, data::COLS, 1) {
        let (h, w, c) = net.input;
        bail!("the model takes {h}x{w}x{c} inputs, not MNIST images: pass --calibration-inputs X.npy (float32, the model's input layout)");
    }
    let train = data::load_part(calibration.data_dir.as_deref(), Part::Train)?;
    crate::quantize::quantize_net(net, &train, calibration.count)
}
