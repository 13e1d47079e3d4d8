//! Activation ranges for post-training quantization, observed on training images.

use burn::prelude::*;

use super::batch::batch;
use super::model::Cnn;
use crate::data::Split;

/// `(min, max)` of each traced activation (conv1, pool1, conv2, pool2, conv3, fc1, logits) over
/// `count` training images spread evenly over the set.
pub fn activation_ranges(model: &Cnn, train: &Split, count: usize, device: &Device) -> Vec<(f32, f32)> {
    let count = count.clamp(1, train.len());
    let step = train.len() / count;
    let indices: Vec<usize> = (0..count).map(|i| i * step).collect();
    let mut ranges: Vec<(f32, f32)> = Vec::new();
    for chunk in indices.chunks(250) {
        let (x, _) = batch(train, chunk, device);
        for (k, t) in model.forward_traced(x).into_iter().enumerate() {
            let v: Vec<f32> = t.into_data().try_to_vec::<f32>().expect("f32 activations");
            let (lo, hi) = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
            if ranges.len() <= k {
                ranges.push((lo, hi));
            } else {
                ranges[k] = (ranges[k].0.min(lo), ranges[k].1.max(hi));
            }
        }
    }
    ranges
}
