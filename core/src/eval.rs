//! Run a Lepton model over a data set on the host, through `lepton-nn`: the same code the device runs.

use anyhow::{anyhow, bail, ensure, Result};
use lepton_nn::{Engine, Model, NoHook, Plan};

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

/// Run the model on every image of `split` with the reference kernels (the oracle), using all
/// cores (one arena per thread).
pub fn run_int8(blob: &[u8], split: &Split) -> Result<Int8Run> {
    run_int8_with(blob, split, false)
}

/// [`run_int8`] with the optimized kernels (`optimized = true`) or the reference ones.
pub fn run_int8_with(blob: &[u8], split: &Split, optimized: bool) -> Result<Int8Run> {
    let model = parse_model(blob, "model")?;
    let inputs = quantize_images(&model, split)?;
    let classes = model.tensor(model.logits_tensor()).shape.len().map_err(|e| anyhow!("{e}"))?;
    if classes != crate::data::CLASSES {
        bail!(
            "the model has {classes} outputs; the data set has {} classes, so accuracy means nothing: run it on its own inputs with `lepton run`",
            crate::data::CLASSES
        );
    }
    let logits = run_inputs(blob, &inputs, optimized)?.logits;
    let predictions = logits.iter().map(|l| lepton_nn::kernels::argmax_s8(l).unwrap_or(0) as u8).collect();
    Ok(Int8Run { logits, predictions })
}

/// The images of `split` as the model's int8 inputs (TFLite's quantization of `pixel / 255`
/// with the input tensor's scale and zero point), one after the other.
pub fn quantize_images(model: &Model, split: &Split) -> Result<Vec<i8>> {
    let shape = model.input_shape();
    let len = shape.len().map_err(|e| anyhow!("{e}"))?;
    if len != split.pixels() {
        bail!(
            "the model takes {}x{}x{} inputs ({len} values); the data set's images are {} ({} values)",
            shape.h,
            shape.w,
            shape.c,
            split.shape_name(),
            split.pixels()
        );
    }
    let q = model.tensor(model.input_tensor());
    let table: Vec<i8> = (0..=255u8).map(|p| crate::lpk::arithmetic::quantize_pixel(p, q.scale, q.zero_point)).collect();
    Ok(split.images.iter().map(|&p| table[p as usize]).collect())
}

/// Every input's logits and outputs (see [`lepton_nn::Inference`]), in order.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    pub logits: Vec<Vec<i8>>,
    pub outputs: Vec<Vec<i8>>,
}

/// Run the model on `inputs` (whole int8 inputs back to back) with the optimized kernels or the
/// reference ones, on all cores (one arena per thread).
pub fn run_inputs(blob: &[u8], inputs: &[i8], optimized: bool) -> Result<Outputs> {
    let model = parse_model(blob, "model")?;
    let mut plan = Box::new(Plan::new());
    let engine = if optimized { Engine::new(model, &mut plan) } else { Engine::reference(model, &mut plan) }.map_err(|e| anyhow!("model: {e}"))?;
    let len = engine.input_range().len();
    ensure!(len > 0 && inputs.len().is_multiple_of(len), "{} input values are not a whole number of the model's {len}-value inputs", inputs.len());
    let count = inputs.len() / len;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(count.max(1));
    let per_thread = count.div_ceil(threads);
    let progress = crate::progress::Progress::new(count as u64, "int8 inference");

    let chunks: Vec<Result<Outputs>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (engine, progress) = (&engine, &progress);
                s.spawn(move || -> Result<Outputs> {
                    let mut arena = vec![0u8; engine.arena_bytes()];
                    let mut out = Outputs::default();
                    for i in t * per_thread..((t + 1) * per_thread).min(count) {
                        let result = engine.run(&inputs[i * len..(i + 1) * len], &mut arena, &mut NoHook).map_err(|e| anyhow!("input {i}: {e}"))?;
                        out.logits.push(result.logits.to_vec());
                        out.outputs.push(result.output().to_vec());
                        progress.inc(1);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("inference thread panicked")))).collect()
    });
    progress.finish();

    let mut all = Outputs::default();
    for chunk in chunks {
        let chunk = chunk?;
        all.logits.extend(chunk.logits);
        all.outputs.extend(chunk.outputs);
    }
    Ok(all)
}

/// Int8 against float on the same images.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Comparison {
    pub float_accuracy: f64,
    /// Fraction of images where int8 and float pick the same class.
    pub agreement: f64,
    /// Largest |dequantized int8 logit - float logit| over all images and classes.
    pub max_logit_error: f64,
    /// Mean of the same over all images and classes.
    pub mean_logit_error: f64,
    /// Real value of one logit step (the logits' quantization scale), to read the errors against.
    pub logit_scale: f64,
}

pub fn compare(blob: &[u8], run: &Int8Run, float_logits: &[Vec<f32>], labels: &[u8]) -> Result<Comparison> {
    let model = parse_model(blob, "model")?;
    let logits = model.tensor(model.logits_tensor());
    let (scale, zp) = (logits.scale as f64, logits.zero_point as f64);
    anyhow::ensure!(float_logits.len() == run.logits.len(), "float and int8 runs cover different images");
    let (mut max, mut sum, mut count, mut agree, mut float_correct) = (0.0f64, 0.0f64, 0usize, 0usize, 0usize);
    for ((q, f), (&pred, &label)) in run.logits.iter().zip(float_logits).zip(run.predictions.iter().zip(labels)) {
        anyhow::ensure!(q.len() == f.len(), "int8 model has {} logits, float model {}", q.len(), f.len());
        for (&q, &f) in q.iter().zip(f) {
            let e = ((q as f64 - zp) * scale - f as f64).abs();
            max = max.max(e);
            sum += e;
            count += 1;
        }
        let float_class = argmax(f) as u8;
        agree += usize::from(float_class == pred);
        float_correct += usize::from(float_class == label);
    }
    let n = run.logits.len().max(1) as f64;
    Ok(Comparison {
        float_accuracy: float_correct as f64 / n,
        agreement: agree as f64 / n,
        max_logit_error: max,
        mean_logit_error: sum / count.max(1) as f64,
        logit_scale: scale,
    })
}

/// First index of the largest value (numpy's rule for ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lpk::{QModel, QNode, QOp, QParams, QTensor};
    use lepton_nn::Shape;

    #[test]
    fn a_model_with_another_class_count_is_refused() {
        let image = QParams { scale: 1.0 / 255.0, zero_point: -128 };
        let model = QModel {
            tensors: vec![QTensor { shape: Shape { h: 28, w: 28, c: 1 }, q: image }, QTensor { shape: Shape { h: 1, w: 1, c: 1 }, q: image }],
            nodes: vec![QNode { op: QOp::Mean, inputs: vec![0], output: 1 }],
            input: 0,
            output: 1,
        };
        let split = crate::data::Split { images: vec![0; 784], labels: vec![3], rows: 28, cols: 28 };
        let e = run_int8(&model.to_lpk().unwrap(), &split).unwrap_err();
        assert!(e.to_string().contains("the model has 1 outputs; the data set has 10 classes"), "{e}");
    }
}
