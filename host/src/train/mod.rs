//! `lepton train`: the seed CNN and sequential networks from an architecture file in burn, the
//! training loop, float inference and the fused training kernels. burn code lives here only (its
//! `Tensor` would clash with tract's in one module).

pub mod arch;
pub mod batch;
pub mod cnn_ops;
pub mod conv_kernels;
pub mod export;
pub mod infer;
pub mod model;
pub mod plot;
pub mod seq;
pub mod trainer;

use std::path::Path;

use anyhow::{bail, Result};
use burn::prelude::*;

use crate::float_net::FloatNet;
use model::Cnn;
use seq::SeqNet;

/// A network `lepton train` trains: logits `[batch, classes]` from images `[batch, c, h, w]`.
pub trait Net: burn::module::Module + 'static {
    fn logits(&self, x: Tensor<4>) -> Tensor<2>;
    /// Quantization-aware training: track activation ranges in the coming forward passes.
    fn track_ranges(&self, _on: bool) {}
    /// Quantization-aware training's state to save beside the model, if it trains so.
    fn qat(&self) -> Option<arch::Qat> {
        None
    }
}

impl Net for Cnn {
    fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward(x)
    }
}

impl Net for SeqNet {
    fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward(x)
    }
    fn track_ranges(&self, on: bool) {
        SeqNet::track_ranges(self, on)
    }
    fn qat(&self) -> Option<arch::Qat> {
        SeqNet::qat(self)
    }
}

/// A trained float model: the seed CNN (its own model, fused layers and file layout) or a
/// sequential network from an architecture.
pub enum FloatModel {
    Seed(Cnn),
    Seq(SeqNet),
}

impl FloatModel {
    pub fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            FloatModel::Seed(m) => m.forward(x),
            FloatModel::Seq(m) => m.forward(x),
        }
    }

    pub fn float_net(&self) -> FloatNet {
        match self {
            FloatModel::Seed(m) => export::float_net(m),
            FloatModel::Seq(m) => m.float_net(),
        }
    }
}

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
    Ok(infer::load(dir, &device)?.float_net())
}
