//! tract-onnx as a second float reference, independent of burn: run an ONNX model on images.
//!
//! tract code lives in `onnx/` only: its prelude's `Tensor` would clash with burn's.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use prost::Message;
use tract_onnx::pb::{tensor_shape_proto, type_proto, GraphProto, ModelProto, ValueInfoProto};
use tract_onnx::prelude::*;

use crate::data::Split;

/// The graph input that is not an initializer, with its dimensions (-1 for symbolic ones).
pub fn graph_input(graph: &GraphProto) -> Result<(&ValueInfoProto, Vec<i64>)> {
    use tensor_shape_proto::dimension::Value;
    let input = graph.input.iter().find(|i| !graph.initializer.iter().any(|t| t.name == i.name)).context("ONNX graph has no input")?;
    let Some(type_proto::Value::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        bail!("ONNX input {} is not a tensor", input.name);
    };
    let dims = t.shape.as_ref().map(|s| s.dim.iter().map(|d| match d.value { Some(Value::DimValue(v)) => v, _ => -1 }).collect()).unwrap_or_default();
    Ok((input, dims))
}

/// The graph input's dimensions with the symbolic ones (the batch) bound to 1: the device runs
/// batch 1.
pub fn bound_input_dims(graph: &GraphProto) -> Result<Vec<usize>> {
    let (_, dims) = graph_input(graph)?;
    Ok(dims.iter().map(|&d| if d > 0 { d as usize } else { 1 }).collect())
}

thread_local! {
    /// Inside [`guarded`] on this thread: panics there are reported as errors, not printed.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Run tract on a file from outside: a panic inside tract (its shape inference asserts on some
/// malformed graphs, e.g. a Squeeze axis out of range: found by fuzzing) becomes an error that
/// says so, and prints nothing. Other threads' panics are reported as before.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = GUARDED.with(|g| g.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    result.unwrap_or_else(|payload| {
        let message = payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_default();
        bail!("tract failed {what}: an internal assertion ({message}); the file is malformed or uses a form tract cannot read")
    })
}

/// tract's reading of an ONNX file, its input fixed to `dims`; value_info, which names the
/// symbolic batch (and would clash with the bound one), is ignored.
pub fn read_bound(bytes: &[u8], dims: &[usize]) -> Result<InferenceModel> {
    guarded("reading the ONNX file", || {
        let model = tract_onnx::onnx().with_ignore_value_info(true).model_for_read(&mut &bytes[..]).map_err(|e| anyhow!("{e:?}"))?;
        model.with_input_fact(0, f32::fact(dims).into()).map_err(|e| anyhow!("{e:?}"))
    })
}

/// An ONNX model loaded and optimized by tract with its batch bound to 1, run one input at a
/// time: raw inputs in the model's own layout ([`TractRunner::run_input`]) or 8-bit images
/// scaled to [0, 1] ([`TractRunner::run`]).
pub struct TractRunner {
    plan: std::sync::Arc<TypedRunnableModel>,
    shape: Vec<usize>,
}

impl TractRunner {
    /// Load `path`; `outputs` names the tensors to read (default: the graph's outputs).
    pub fn load(path: &Path, outputs: Option<&[&str]>) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_bytes(&bytes, path, outputs)
    }

    /// [`TractRunner::load`] of a file already read (`path` names it in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path, outputs: Option<&[&str]>) -> Result<Self> {
        let proto = ModelProto::decode(bytes).map_err(|e| anyhow!("{}: not an ONNX model: {e}", path.display()))?;
        let shape = bound_input_dims(proto.graph.as_ref().context("ONNX model has no graph")?)?;
        let mut model = read_bound(bytes, &shape).with_context(|| format!("loading {} with tract-onnx", path.display()))?;
        if let Some(names) = outputs {
            let outlets = names.iter().map(|n| model.find_outlet_label(n).with_context(|| format!("tensor {n} not found by tract"))).collect::<Result<Vec<_>>>()?;
            model = model.with_output_outlets(&outlets).map_err(|e| anyhow!("{e:?}"))?;
        }
        let plan = guarded("optimizing the ONNX graph", || model.into_optimized().and_then(|m| m.into_runnable()).map_err(|e| anyhow!("{e:?}")))
            .with_context(|| format!("preparing {} with tract-onnx", path.display()))?;
        Ok(TractRunner { plan, shape })
    }

    /// Every output of the model for one 8-bit image (a single-channel model's H x W pixels).
    pub fn run(&self, image: &[u8]) -> Result<Vec<Vec<f32>>> {
        let pixels: Vec<f32> = image.iter().map(|&p| p as f32 / 255.0).collect();
        self.run_input(&pixels)
    }

    /// Every output of the model for one input in its own layout, flattened.
    pub fn run_input(&self, values: &[f32]) -> Result<Vec<Vec<f32>>> {
        let input = Tensor::from_shape(&self.shape, values).map_err(|e| anyhow!("{e:?}"))?;
        let outputs = guarded("running the ONNX graph", || self.plan.run(tvec!(input.into())).map_err(|e| anyhow!("{e:?}")))?;
        outputs.iter().map(|o| Ok(o.to_plain_array_view::<f32>().map_err(|e| anyhow!("{e:?}"))?.iter().copied().collect())).collect()
    }
}

/// Float logits of every image of `split` with tract running the ONNX model at `path`. When the
/// graph ends with a Softmax, its input (the logits) is read instead of the probabilities.
pub fn float_logits(path: &Path, split: &Split) -> Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let proto = ModelProto::decode(&bytes[..]).map_err(|e| anyhow!("{}: not an ONNX model: {e}", path.display()))?;
    let logits = proto.graph.as_ref().and_then(|g| g.node.last()).filter(|n| n.op_type == "Softmax").and_then(|n| n.input.first().cloned());
    let names: Option<[&str; 1]> = logits.as_deref().map(|n| [n]);
    let runner = TractRunner::load(path, names.as_ref().map(|n| &n[..]))?;
    let progress = crate::progress::Progress::new(split.len() as u64, "tract float");
    let mut out = Vec::with_capacity(split.len());
    for i in 0..split.len() {
        out.push(runner.run(split.image(i))?.swap_remove(0));
        progress.inc(1);
    }
    progress.finish();
    Ok(out)
}
