//! `lepton train`: the seed CNN in burn, its training loop, float inference and the fused
//! training kernels. burn code lives here only (its `Tensor` would clash with tract's in one
//! module).

pub mod batch;
pub mod cnn_ops;
pub mod conv_kernels;
pub mod export;
pub mod infer;
pub mod model;
pub mod plot;
pub mod trainer;

use std::path::Path;

use anyhow::{bail, Result};
use burn::prelude::Device;

use crate::float_net::FloatNet;

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

/// The trained model in a `lepton train` directory as a framework-independent float network.
pub fn load_float_net(dir: &Path) -> Result<FloatNet> {
    let device = device()?;
    Ok(export::float_net(&infer::load(dir, &device)?))
}
