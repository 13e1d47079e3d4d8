//! Float inference with burn over a whole split.

use anyhow::{Context, Result};
use burn::prelude::*;

use super::batch::batch;
use super::model::Cnn;
use crate::data::Split;

/// Load the float model from `model.bpk` in `dir`.
pub fn load(dir: &std::path::Path, device: &Device) -> Result<Cnn> {
    let path = dir.join(super::trainer::MODEL_FILE);
    if !path.is_file() {
        anyhow::bail!("{} not found: is {} a float model directory made by `lepton train`?", path.display(), dir.display());
    }
    Cnn::new(device).try_load_file(&path).map_err(|e| anyhow::anyhow!("{e:?}")).with_context(|| format!("loading {} (corrupt or not a Lepton float model?)", path.display()))
}

/// Logits `[n][10]` for every image of `split`, in order.
pub fn logits(model: &Cnn, split: &Split, device: &Device) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(split.len());
    let indices: Vec<usize> = (0..split.len()).collect();
    for chunk in indices.chunks(500) {
        let (x, _) = batch(split, chunk, device);
        let data = model.forward(x).into_data();
        let values: Vec<f32> = data.try_to_vec::<f32>().expect("f32 logits");
        out.extend(values.chunks(10).map(<[f32]>::to_vec));
    }
    out
}
