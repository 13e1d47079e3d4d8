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
    tensors(split, indices, pixels, device)
}

/// `pixels` (`indices.len()` images of `split`'s size) and the images' labels as tensors.
fn tensors(split: &Split, indices: &[usize], pixels: Vec<f32>, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let labels: Vec<i64> = indices.iter().map(|&i| split.labels[i] as i64).collect();
    let images = Tensor::from_data(TensorData::new(pixels, [indices.len(), 1, split.rows, split.cols]), device);
    let labels = Tensor::from_data(TensorData::new(labels, [indices.len()]), device);
    (images, labels)
}

/// [`batch`] with every image shifted by a random `(dy, dx)` in `-max..=max` (zeros shifted in):
/// light augmentation for small networks.
pub fn shifted_batch(split: &Split, indices: &[usize], max: usize, rng: &mut impl rand::Rng, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let (rows, cols) = (split.rows, split.cols);
    let max = max as i64;
    let mut pixels = vec![0.0f32; indices.len() * split.pixels()];
    for (&i, out) in indices.iter().zip(pixels.chunks_mut(split.pixels())) {
        let (dy, dx) = (rng.random_range(-max..=max) as isize, rng.random_range(-max..=max) as isize);
        let image = split.image(i);
        for y in 0..rows as isize {
            for x in 0..cols as isize {
                let (sy, sx) = (y - dy, x - dx);
                if (0..rows as isize).contains(&sy) && (0..cols as isize).contains(&sx) {
                    out[y as usize * cols + x as usize] = image[sy as usize * cols + sx as usize] as f32 / 255.0;
                }
            }
        }
    }
    tensors(split, indices, pixels, device)
}
