//! `lepton quantize`: a trained float model to an int8 [`QModel`], calibrated on training
//! images with the deterministic f64 forward pass ([`calibrate`]) and quantized with TFLite's
//! post-training recipe ([`ptq`]). The `.lpk` bytes follow in [`crate::lpk`].

pub mod calibrate;
pub mod ptq;

use std::path::Path;

use anyhow::Result;

use crate::data::{self, Part, Split};
use crate::float_net::FloatNet;
use crate::lpk::QModel;

/// Calibrate `net` on `count` images of `train` and quantize it.
pub fn quantize_net(net: &FloatNet, train: &Split, count: usize) -> Result<QModel> {
    quantize_net_with(net, train, count, ptq::WeightBits::Eight)
}

/// [`quantize_net`] with weights of `bits` (see [`ptq::quantize_net_with`]).
pub fn quantize_net_with(net: &FloatNet, train: &Split, count: usize, bits: ptq::WeightBits) -> Result<QModel> {
    let indices = calibrate::calibration_indices(train.len(), count);
    eprintln!("calibrating on {} training images (f64 reference forward pass) ...", indices.len());
    let ranges = calibrate::activation_ranges(net, train, &indices)?;
    ptq::quantize_net_with(net, &ranges, bits)
}

/// `lepton quantize`: load the float model in `float_dir` (a `lepton train` directory),
/// calibrate on `calibration` training images, and quantize (int4 weights for `--weights int4`).
pub fn quantize(float_dir: &Path, data_dir: Option<&Path>, calibration: usize, bits: ptq::WeightBits) -> Result<QModel> {
    let net = crate::train::load_float_net(float_dir)?;
    if let Some(qat) = crate::train::arch::Arch::of_model(float_dir)?.qat {
        let trained = if qat.weight_bits == 4 { ptq::WeightBits::Four } else { ptq::WeightBits::Eight };
        if trained != bits {
            eprintln!("warning: {} trained with {}-bit weights; quantizing to {:?}", float_dir.display(), qat.weight_bits, bits);
        }
        eprintln!("using the activation ranges quantization-aware training tracked (no calibration)");
        return ptq::quantize_net_with(&net, &qat_ranges(&net, &qat)?, bits);
    }
    let train = data::load_part(data_dir, Part::Train)?;
    quantize_net_with(&net, &train, calibration, bits)
}

/// Every tensor's range for [`ptq::quantize_net_with`] from what quantization-aware training
/// tracked: the input's [0, 1], each layer's output (layer `i` of the sequential network is the
/// float network's layer `i`; a pool or flatten keeps its input's parameters whatever its range
/// says), the final softmax's unused.
fn qat_ranges(net: &FloatNet, qat: &crate::train::arch::Qat) -> Result<Vec<(f32, f32)>> {
    anyhow::ensure!(qat.ranges.len() + 1 == net.layers.len(), "the tracked ranges ({}) do not fit the network's {} layers", qat.ranges.len(), net.layers.len());
    let mut ranges = vec![(0.0, 1.0)];
    ranges.extend(qat.ranges.iter().map(|r| r.unwrap_or((0.0, 0.0))));
    ranges.push((0.0, 1.0));
    Ok(ranges)
}
