//! # lepton-core
//!
//! The host half of Lepton that needs no ML framework: data sets, the `.lpk` writer (quantized
//! models in memory and TFLite's quantization arithmetic), int8 evaluation on `lepton-nn` (the
//! very code the device runs), the cost report, and the QEMU device harness. `xtask` builds on
//! this crate alone; the `lepton` CLI adds training (burn), import (tract) and flashing
//! (probe-rs) on top.

pub mod cycles;
pub mod data;
pub mod device;
pub mod eval;
pub mod files;
pub mod lpk;
pub mod npy;
pub mod progress;
pub mod report;
pub mod uart;
