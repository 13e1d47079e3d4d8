//! Run a Lepton model over a data set on the host, through `lepton-nn`: the same code the device runs.

use anyhow::{anyhow, Result};
use lepton_nn::{Engine, Model, NoHook};

use crate::data::Split;

/// Every image's int8 logits and predicted class, in data-set order.
#[derive(Clone, Debug)]
pub struct Int8Run {
    pub logits: Vec<Vec<i8>>,
    pub predictions: Vec<u8>,
}

impl Int8Run {
    pub fn accuracy(&self, labels: &[u8]) -> f64 {
        let correct = self.predictions.iter().zip(labels).filter(|(p, l)| p == l).count();
        correct as f64 / labels.len().max(1) as f64
    }
}

/// Parse a model blob, turning the engine's error into a message that names the file.
pub fn parse_model<'a>(blob: &'a [u8], name: &str) -> Result<Model<'a>> {
    Model::parse(blob).map_err(|e| anyhow!("{name}: {e}"))
}

/// Run the model on every image of `split`, using all cores (one arena per thread).
pub fn run_int8(blob: &[u8], split: &Split) -> Result<Int8Run> {
    let model = parse_model(blob, "model")?;
    let engine = Engine::new(model).map_err(|e| anyhow!("model: {e}"))?;
    let count = split.len();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(count.max(1));
    let per_thread = count.div_ceil(threads);
    let progress = crate::progress::bar(count as u64, "int8 inference");

    let chunks: Vec<Result<Vec<Vec<i8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (engine, progress) = (&engine, &progress);
                s.spawn(move || -> Result<Vec<Vec<i8>>> {
                    let mut arena = vec![0u8; engine.arena_bytes()];
                    let mut input = vec![0i8; engine.model().input_shape().len().map_err(|e| anyhow!("{e}"))?];
                    let mut out = Vec::new();
                    for i in t * per_thread..((t + 1) * per_thread).min(count) {
                        engine.model().quantize_input(split.image(i), &mut input).map_err(|e| anyhow!("image {i}: {e}"))?;
                        let result = engine.run(&input, &mut arena, &mut NoHook).map_err(|e| anyhow!("image {i}: {e}"))?;
                        out.push(result.logits.to_vec());
                        progress.inc(1);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("inference thread panicked")))).collect()
    });
    progress.finish_and_clear();

    let mut logits = Vec::with_capacity(count);
    for chunk in chunks {
        logits.extend(chunk?);
    }
    let predictions = logits.iter().map(|l| lepton_nn::kernels::argmax_s8(l).unwrap_or(0) as u8).collect();
    Ok(Int8Run { logits, predictions })
}
