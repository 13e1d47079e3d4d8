//! Activation ranges for post-training quantization: every layer's output range over
//! calibration images, from the network's deterministic f64 forward pass ([`FloatNet::forward`]).
//! Min and max do not depend on the order images are visited, so threads change nothing.

use anyhow::{anyhow, Result};

use crate::data::Split;
use crate::float_net::FloatNet;

/// The images calibration uses: `count` training images spread evenly over the set.
pub fn calibration_indices(len: usize, count: usize) -> Vec<usize> {
    let count = count.clamp(1, len.max(1));
    let step = len / count;
    (0..count).map(|i| i * step).collect()
}

/// `(min, max)` of every tensor (index 0: the input) over the images `indices` of `split`
/// (pixels / 255).
pub fn activation_ranges(net: &FloatNet, split: &Split, indices: &[usize]) -> Result<Vec<(f32, f32)>> {
    let image = |i: usize| -> Vec<f64> { split.image(i).iter().map(|&p| (p as f32 / 255.0) as f64).collect() };
    ranges_over(net, indices.len(), |k| image(indices[k]))
}

/// `(min, max)` of every tensor over `count` inputs (`input(k)`: the k-th, NHWC, in f64).
pub fn ranges_over(net: &FloatNet, count: usize, input: impl Fn(usize) -> Vec<f64> + Sync) -> Result<Vec<(f32, f32)>> {
    let indices: Vec<usize> = (0..count).collect();
    let indices = &indices[..];
    let input = &input;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(indices.len().max(1));
    let per_thread = indices.len().div_ceil(threads);
    let progress = crate::progress::Progress::new(indices.len() as u64, "calibration");
    let partial: Vec<Result<Vec<(f64, f64)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = indices
            .chunks(per_thread.max(1))
            .map(|chunk| {
                let progress = &progress;
                s.spawn(move || -> Result<Vec<(f64, f64)>> {
                    let mut ranges = vec![(f64::INFINITY, f64::NEG_INFINITY); net.layers.len() + 1];
                    for &i in chunk {
                        for (r, a) in ranges.iter_mut().zip(net.forward(&input(i))?) {
                            *r = a.values.iter().fold(*r, |(lo, hi), &v| (lo.min(v), hi.max(v)));
                        }
                        progress.inc(1);
                    }
                    Ok(ranges)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("calibration thread panicked")))).collect()
    });
    progress.finish();
    let mut ranges = vec![(f64::INFINITY, f64::NEG_INFINITY); net.layers.len() + 1];
    for p in partial {
        for (r, (lo, hi)) in ranges.iter_mut().zip(p?) {
            *r = (r.0.min(lo), r.1.max(hi));
        }
    }
    Ok(ranges.into_iter().map(|(lo, hi)| (lo as f32, hi as f32)).collect())
}
