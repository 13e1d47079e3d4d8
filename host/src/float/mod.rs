//! The float side: the seed CNN in burn, its training loop and float inference. burn code lives
//! here only (its `Tensor` would clash with tract's in one module).

pub mod batch;
pub mod calibrate;
pub mod cnn_ops;
pub mod conv_kernels;
pub mod export;
pub mod infer;
pub mod model;
pub mod plot;
pub mod train;

use anyhow::{bail, Result};
use burn::prelude::Device;

/// The compute device: burn's pure-Rust CPU backend `flex` by default; `LEPTON_DEVICE=wgpu` or
/// `cuda` select a GPU backend when the binary was built with that cargo feature.
pub fn device() -> Result<Device> {
    match std::env::var("LEPTON_DEVICE").as_deref().unwrap_or("flex") {
        "flex" | "cpu" => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(Default::default())),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        other => bail!("LEPTON_DEVICE={other}: not available in this build (built-in: flex{}{})",
            if cfg!(feature = "wgpu") { ", wgpu" } else { "" },
            if cfg!(feature = "cuda") { ", cuda" } else { "" }),
    }
}
