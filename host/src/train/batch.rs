//! MNIST examples to burn tensors: pixels scaled to [0, 1], NCHW.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::data::Split;

/// Images `indices` of `split` as `[n, 1, rows, cols]` and their labels as `[n]`.
pub fn batch(split: &Split, indices: &[usize], device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let mut pixels = Vec::with_capacity(indices.len() * split.pixels());
    for &i in indices {
        pixels.extend(split.image(i).iter().map(|&p| p as f32 / 255.0));
    }
    let labels: Vec<i64> = indices.iter().map(|&i| split.labels[i] as i64).collect();
    let images = Tensor::from_data(TensorData::new(pixels, [indices.len(), 1, split.rows, split.cols]), device);
    let labels = Tensor::from_data(TensorData::new(labels, [indices.len()]), device);
    (images, labels)
}
