//! # lepton (host)
//!
//! The `lepton` CLI's library: training (burn), quantization, import (TFLite and ONNX with
//! tract), ONNX export, and flashing (probe-rs), on top of `lepton-core` (data, the `.lpk`
//! writer, int8 evaluation, reports, the QEMU harness), whose modules are re-exported here. The
//! integer engine itself is `lepton-nn`, shared with the firmware.
//!
//! One module per stage of the pipeline: [`data`] → [`train`] → [`quantize`] or [`import`] →
//! [`lpk`] (write) → [`eval`] → [`report`] → [`device`] (QEMU) or [`flash`] (a board).

pub use lepton_core::{data, device, eval, files, lpk, npy, progress, report, uart};

pub mod board_link;
pub mod flash;
pub mod float_net;
pub mod float_reference;
pub mod import;
pub mod onnx;
pub mod pareto_plot;
pub mod quantize;
pub mod train;

pub use lepton_core::files::write_atomically;
