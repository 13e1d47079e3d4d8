//! `lepton report`: the cost-benefit table of a Lepton model — per op: shapes, parameters, MACs,
//! weight bytes, activation bytes — and the engine's memory plan (which tensors share which
//! bytes of the arena).

use anyhow::{anyhow, Result};
use lepton_nn::format::{Layer, Model, Op, NO_TENSOR};
use lepton_nn::{Engine, Plan, Shape};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct LayerCost {
    pub index: usize,
    pub op: &'static str,
    /// Input tensor shape (the first input of an add).
    pub input: [u16; 3],
    pub output: [u16; 3],
    /// The tensors the op reads and writes.
    pub input_tensors: Vec<usize>,
    pub output_tensor: usize,
    pub parameters: usize,
    pub macs: u64,
    /// Bytes of the op's sections in the model: int8 weights, int32 bias, multipliers, shifts.
    pub weight_bytes: usize,
    /// Bytes of the op's output tensor (0 for a reshape, which is a view).
    pub activation_bytes: usize,
    /// Instructions per inference on the device, when measured (`cargo xtask bench`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<u64>,
    /// Estimated Cortex-M4 cycles per inference (`cargo xtask bench`, zero wait states).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycles_estimate: Option<u64>,
}

/// Where a tensor (or a step's scratch) lives in the optimized engine's arena.
#[derive(Clone, Debug, Serialize)]
pub struct PlacedBuffer {
    /// `tensor N` or `scratch of step N`.
    pub what: String,
    pub offset: usize,
    pub bytes: usize,
    /// The steps of the plan during which these bytes are in use.
    pub steps: [usize; 2],
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub layers: Vec<LayerCost>,
    pub parameters: usize,
    pub macs: u64,
    pub weight_bytes: usize,
    pub model_bytes: usize,
    /// Peak RAM of the optimized engine: every stored tensor and scratch, as planned.
    pub arena_bytes: usize,
    /// The memory plan, by offset.
    pub plan: Vec<PlacedBuffer>,
    /// Device instructions per inference, from `cargo xtask bench` (`<model>.bench.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions_per_inference: Option<u64>,
    /// Estimated Cortex-M4 cycles per inference, from the same bench.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycles_estimate: Option<u64>,
    /// Weight layouts used (`canonical`, `int8`, `i16`): the flash/instructions trade-off.
    pub weight_layouts: Vec<&'static str>,
    /// The model's bytes with each point of the trade (`lepton quantize --weights fast|compact`):
    /// the layers stored in an OC4 layout re-sized for i16 and for int8 weights, exactly (weight
    /// sections are whole words in both layouts).
    pub weight_trade: Vec<TradePoint>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TradePoint {
    /// `i16` (every layer), `fast` (the per-layer choice of `--weights fast`), `compact` (int8)
    /// or `int4`.
    pub weights: &'static str,
    pub model_bytes: usize,
    /// Whether this model is stored so.
    pub this_model: bool,
}

impl Report {
    /// Attach the per-step device instructions measured by `cargo xtask bench`, each charged to
    /// the op the bench names (`first_layer`, see `lepton_nn::protocol::charged_layer`).
    pub fn with_bench(mut self, bench: &serde_json::Value) -> Self {
        self.instructions_per_inference = bench["instructions_per_inference"].as_u64();
        self.cycles_estimate = bench["cycles_estimate"].as_u64();
        for step in bench["layers"].as_array().into_iter().flatten() {
            if let (Some(first), Some(n)) = (step["first_layer"].as_u64(), step["instructions"].as_u64()) {
                if let Some(layer) = self.layers.get_mut(first as usize) {
                    layer.instructions = Some(n);
                    layer.cycles_estimate = step["cycles_estimate"].as_u64();
                }
            }
        }
        self
    }
}

fn dims(s: Shape) -> [u16; 3] {
    [s.h, s.w, s.c]
}

/// Parameters and multiply-accumulates of one op.
fn op_cost(layer: &Layer, output: Shape) -> Result<(usize, u64)> {
    let out = output.len().map_err(|e| anyhow!("{e}"))? as u64;
    Ok(match layer {
        Layer::Conv2d(p) => {
            let taps = p.kernel_h as usize * p.kernel_w as usize * p.input.c as usize;
            (p.output.c as usize * (taps + 1), out * taps as u64)
        }
        Layer::DepthwiseConv2d(p) => {
            let taps = p.kernel_h as usize * p.kernel_w as usize;
            (p.output.c as usize * (taps + 1), out * taps as u64)
        }
        Layer::FullyConnected(p) => (p.output_len * (p.input_len + 1), (p.input_len * p.output_len) as u64),
        _ => (0, 0),
    })
}

/// [`Report::weight_trade`]: every layer stored in an OC4 or Winograd layout re-sized for each
/// point: `i16` everywhere, `fast` (`lepton quantize --weights fast`'s per-layer choice),
/// `compact` (int8) and `int4` (two weights a byte: `lepton quantize --weights int4`, whose
/// 4-bit weights are quantized anew from the float model).
fn weight_trade(model: &Model) -> Result<Vec<TradePoint>> {
    use lepton_nn::WeightLayout::{self, Oc4Int4, Oc4PairsI16, Oc4Quads, Winograd2x2};
    let mut current = 0usize;
    let mut points = [("i16", 0usize, true), ("fast", 0, true), ("compact", 0, true), ("int4", 0, true)];
    let mut any = false;
    for i in 0..model.op_count() {
        let rec = model.op_record(i);
        let Some(layout) = WeightLayout::from_code(rec.weight_layout).filter(|&l| l != WeightLayout::Canonical) else { continue };
        let (channels, taps, fully_connected) = match model.op(i).map_err(|e| anyhow!("{e}"))? {
            Layer::Conv2d(p) => (p.output.c as usize, p.kernel_h as usize * p.kernel_w as usize * p.input.c as usize, false),
            Layer::FullyConnected(p) => (p.output_len, p.input_len, true),
            _ => continue,
        };
        let fast = if fully_connected {
            if Oc4PairsI16.bytes(channels, taps).unwrap_or(0) > 32 * 1024 { Oc4Quads } else { Oc4PairsI16 }
        } else if winograd_shape(model, i) {
            Winograd2x2
        } else {
            Oc4PairsI16
        };
        current += rec.weights.len as usize;
        any = true;
        // Split i16 (layout 5) is i16 in another order: the same point of the trade.
        let layout = if layout == WeightLayout::Oc4SplitI16 { Oc4PairsI16 } else { layout };
        for (point, l) in points.iter_mut().zip([Oc4PairsI16, fast, Oc4Quads, Oc4Int4]) {
            point.1 += l.bytes(channels, taps).ok_or_else(|| anyhow!("layer {i}: weights too large"))?;
            point.2 &= layout == l;
        }
    }
    let total = model.byte_len();
    Ok(points.into_iter().map(|(weights, bytes, this)| TradePoint { weights, model_bytes: total - current + bytes, this_model: any && this }).collect())
}

/// Op `i` is a 3x3 stride-1 VALID conv whose only reader is a 2x2 stride-2 VALID max-pool.
fn winograd_shape(model: &Model, i: usize) -> bool {
    let rec = model.op_record(i);
    let readers: Vec<usize> = (0..model.op_count()).filter(|&j| model.op_record(j).inputs.contains(&rec.output)).collect();
    let pooled = matches!(readers.as_slice(), [j] if matches!(model.op(*j), Ok(Layer::MaxPool2d(p))
        if (p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.padding) == (2, 2, 2, 2, lepton_nn::Padding::Valid)));
    (rec.op, rec.kernel_h, rec.kernel_w, rec.stride_h, rec.stride_w, rec.padding) == (Op::Conv2d as u8, 3, 3, 1, 1, lepton_nn::Padding::Valid as u8) && pooled
}

pub fn report(blob: &[u8]) -> Result<Report> {
    let model = Model::parse(blob).map_err(|e| anyhow!("{e}"))?;
    let mut plan = Box::new(Plan::new());
    let engine = Engine::new(model, &mut plan).map_err(|e| anyhow!("{e}"))?;
    let mut layers = Vec::new();
    for i in 0..model.op_count() {
        let rec = model.op_record(i);
        let layer = model.op(i).map_err(|e| anyhow!("{e}"))?;
        let output = model.tensor(rec.output as usize).shape;
        let (parameters, macs) = op_cost(&layer, output)?;
        let is_view = rec.op == Op::Reshape as u8;
        layers.push(LayerCost {
            index: i,
            op: Op::from_code(rec.op).map_or("?", Op::name),
            input: dims(model.tensor(rec.inputs[0] as usize).shape),
            output: dims(output),
            input_tensors: rec.inputs.iter().filter(|&&t| t != NO_TENSOR).map(|&t| t as usize).collect(),
            output_tensor: rec.output as usize,
            parameters,
            macs,
            weight_bytes: rec.sections().iter().map(|s| s.len as usize).sum(),
            activation_bytes: if is_view { 0 } else { output.len().map_err(|e| anyhow!("{e}"))? },
            instructions: None,
            cycles_estimate: None,
        });
    }
    let mut weight_layouts: Vec<&'static str> = (0..model.op_count())
        .map(|i| model.op_record(i))
        .filter(|r| r.weights.len > 0)
        .map(|r| match lepton_nn::WeightLayout::from_code(r.weight_layout) {
            Some(lepton_nn::WeightLayout::Canonical) => "canonical",
            Some(lepton_nn::WeightLayout::Oc4Quads) => "int8",
            Some(lepton_nn::WeightLayout::Oc4PairsI16) => "i16",
            Some(lepton_nn::WeightLayout::Oc4SplitI16) => "i16",
            Some(lepton_nn::WeightLayout::Winograd2x2) => "winograd",
            Some(lepton_nn::WeightLayout::Oc4Int4) => "int4",
            None => "?",
        })
        .collect();
    weight_layouts.sort_unstable();
    weight_layouts.dedup();
    let mut placed: Vec<PlacedBuffer> = engine
        .placements()
        .map(|p| PlacedBuffer {
            what: match (p.tensor, p.scratch_of) {
                (Some(t), _) => format!("tensor {t}"),
                (None, Some(s)) => format!("scratch of step {s}"),
                _ => "?".into(),
            },
            offset: p.offset,
            bytes: p.len,
            steps: [p.first_step, p.last_step],
        })
        .collect();
    placed.sort_by_key(|p| (p.offset, p.steps[0]));
    Ok(Report {
        instructions_per_inference: None,
        cycles_estimate: None,
        weight_layouts,
        weight_trade: weight_trade(&model)?,
        parameters: layers.iter().map(|l| l.parameters).sum(),
        macs: layers.iter().map(|l| l.macs).sum(),
        weight_bytes: layers.iter().map(|l| l.weight_bytes).sum(),
        model_bytes: model.byte_len(),
        arena_bytes: engine.arena_bytes(),
        plan: placed,
        layers,
    })
}

pub fn print_table(r: &Report) {
    let shape = |d: [u16; 3]| format!("{}x{}x{}", d[0], d[1], d[2]);
    let measured = r.layers.iter().any(|l| l.instructions.is_some());
    println!(
        "{:>2}  {:<16} {:>10} {:>10} {:>8} {:>11} {:>9} {:>9}{}",
        "#", "op", "input", "output", "params", "MACs", "weight B", "act B",
        if measured { "  instructions   cycles est." } else { "" }
    );
    for l in &r.layers {
        println!(
            "{:>2}  {:<16} {:>10} {:>10} {:>8} {:>11} {:>9} {:>9}{}",
            l.index, l.op, shape(l.input), shape(l.output), l.parameters, l.macs, l.weight_bytes, l.activation_bytes,
            l.instructions.map(|n| format!("  {n:>12}  {:>12}", l.cycles_estimate.map_or("-".to_string(), |c| c.to_string()))).unwrap_or_default()
        );
    }
    println!("{:>2}  {:<16} {:>10} {:>10} {:>8} {:>11} {:>9}", "", "total", "", "", r.parameters, r.macs, r.weight_bytes);
    println!("model file {} bytes (weights stored as {}); arena {} bytes", r.model_bytes, r.weight_layouts.join(", "), r.arena_bytes);
    let trade: Vec<String> = r.weight_trade.iter().map(|t| format!("{} {} bytes{}", t.weights, t.model_bytes, if t.this_model { " (this model)" } else { "" })).collect();
    println!("weights trade (lepton quantize --weights i16|fast|compact): {}", trade.join(", "));
    println!("memory plan (offset, bytes, steps in use): buffers at the same offset share those bytes at different times");
    for p in &r.plan {
        println!("  {:>7} {:>7}  steps {:>2}-{:<2}  {}", p.offset, p.bytes, p.steps[0], p.steps[1], p.what);
    }
    if let Some(n) = r.instructions_per_inference {
        println!("device: {n} instructions per inference (cargo xtask bench; a fused step is charged to its first op)");
    }
    if let Some(c) = r.cycles_estimate {
        println!("        {c} cycles estimated ({:.2} ms at 168 MHz; Cortex-M4 timings, zero wait states)", c as f64 / 168e3);
    }
}
