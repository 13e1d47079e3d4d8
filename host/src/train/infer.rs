//! Float inference with burn over a whole split.

use anyhow::{Context, Result};
use burn::prelude::*;

use super::arch::Arch;
use super::batch::batch;
use super::model::Cnn;
use super::seq::SeqNet;
use super::FloatModel;
use crate::data::Split;

/// Load the float model from `model.bpk` in `dir`, with the architecture saved beside it
/// (`arch.json`; none: the seed CNN).
pub fn load(dir: &std::path::Path, device: &Device) -> Result<FloatModel> {
    let path = dir.join(super::trainer::MODEL_FILE);
    if !path.is_file() {
        anyhow::bail!("{} not found: is {} a float model directory made by `lepton train`?", path.display(), dir.display());
    }
    let arch = Arch::of_model(dir)?;
    let loading = || format!("loading {} (corrupt or not a Lepton float model? it must have been made with the architecture in {})", path.display(), dir.join(super::arch::ARCH_FILE).display());
    if arch.is_seed() {
        let model = Cnn::new(device).try_load_file(&path).map_err(|e| anyhow::anyhow!("{e:?}")).with_context(loading)?;
        return Ok(FloatModel::Seed(model));
    }
    let input = arch.input_shape().with_context(|| format!("{} names no input shape (write it as \"input\": [h, w, c])", dir.join(super::arch::ARCH_FILE).display()))?;
    let net = SeqNet::new(&arch, input, crate::data::CLASSES, device)?;
    let net = net.try_load_file(&path).map_err(|e| anyhow::anyhow!("{e:?}")).with_context(loading)?;
    // A quantization-aware model runs as it trained: fake-quantized with its tracked ranges.
    let net = match &arch.qat {
        Some(q) => net.with_qat(q.weight_bits, Some(q.ranges.clone())),
        None => net,
    };
    Ok(FloatModel::Seq(net))
}

/// Logits `[n][classes]` for every image of `split`, in order.
pub fn logits(model: &FloatModel, split: &Split, device: &Device) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(split.len());
    let indices: Vec<usize> = (0..split.len()).collect();
    for chunk in indices.chunks(500) {
        let (x, _) = batch(split, chunk, device);
        let data = model.logits(x).into_data();
        let values: Vec<f32> = data.try_to_vec::<f32>().expect("f32 logits");
        out.extend(values.chunks(crate::data::CLASSES).map(<[f32]>::to_vec));
    }
    out
}
