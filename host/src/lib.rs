//! # lepton (host)
//!
//! The host half of Lepton: data, import, quantization arithmetic, the `.lpk` writer and
//! evaluation. The integer engine itself is `lepton-nn`, shared with the firmware.

pub mod data;
pub mod eval;
pub mod import_tflite;
pub mod progress;
pub mod qmodel;
pub mod quant;
