//! `lepton report`: the cost-benefit table of a Lepton model — per layer op, shapes, parameters,
//! MACs, weight bytes, activation bytes — and the arena the engine plans.

use anyhow::{anyhow, Result};
use lepton_nn::format::{Layer, Model, Op};
use lepton_nn::{plan_steps, Engine, Shape, Step};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct LayerCost {
    pub index: usize,
    pub op: &'static str,
    pub input: [u16; 3],
    pub output: [u16; 3],
    pub parameters: usize,
    pub macs: u64,
    /// Bytes of the layer's sections in the model: int8 weights, int32 bias, multipliers, shifts.
    pub weight_bytes: usize,
    /// Bytes of the layer's output tensor (0 for a reshape, which is a view).
    pub activation_bytes: usize,
    /// Arena bytes live while this layer runs alone with the reference kernels: input + scratch +
    /// output (the optimized engine fuses conv + pool and needs less; see `arena_bytes`).
    pub live_bytes: usize,
    /// Instructions per inference on the device, when measured (`cargo xtask bench`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub layers: Vec<LayerCost>,
    pub parameters: usize,
    pub macs: u64,
    pub weight_bytes: usize,
    pub model_bytes: usize,
    pub arena_bytes: usize,
    /// Device instructions per inference, from `cargo xtask bench` (`<model>.bench.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions_per_inference: Option<u64>,
    /// Weight layouts used (`canonical`, `int8`, `i16`): the flash/instructions trade-off.
    pub weight_layouts: Vec<&'static str>,
}

impl Report {
    /// Attach the per-layer device instructions measured by `cargo xtask bench`. A fused step
    /// (e.g. conv2d+max_pool2d) is charged to its first layer.
    pub fn with_bench(mut self, bench: &serde_json::Value) -> Self {
        self.instructions_per_inference = bench["instructions_per_inference"].as_u64();
        for step in bench["layers"].as_array().into_iter().flatten() {
            if let (Some(first), Some(n)) = (step["first_layer"].as_u64(), step["instructions"].as_u64()) {
                if let Some(layer) = self.layers.get_mut(first as usize) {
                    layer.instructions = Some(n);
                }
            }
        }
        self
    }
}

fn dims(s: Shape) -> [u16; 3] {
    [s.h, s.w, s.c]
}

pub fn report(blob: &[u8]) -> Result<Report> {
    let model = Model::parse(blob).map_err(|e| anyhow!("{e}"))?;
    let mut plan = vec![Step::EMPTY; plan_steps(model.layer_count())];
    let engine = Engine::new(model, &mut plan).map_err(|e| anyhow!("{e}"))?;
    let mut layers = Vec::new();
    for i in 0..model.layer_count() {
        let rec = model.record(i as u16);
        let layer = model.layer(i).map_err(|e| anyhow!("{e}"))?;
        let (parameters, macs) = match &layer {
            Layer::Conv2d(p) => (
                p.output.c as usize * (p.kernel_h as usize * p.kernel_w as usize * p.input.c as usize + 1),
                rec.output.len()? as u64 * p.kernel_h as u64 * p.kernel_w as u64 * p.input.c as u64,
            ),
            Layer::FullyConnected(p) => (p.output_len * (p.input_len + 1), (p.input_len * p.output_len) as u64),
            _ => (0, 0),
        };
        let weight_bytes = [rec.weights, rec.bias, rec.multipliers, rec.shifts].iter().map(|s| s.len as usize).sum();
        let is_view = rec.op == Op::Reshape as u8;
        let activation_bytes = if is_view { 0 } else { rec.output.len()? };
        let live_bytes = if is_view { 0 } else { rec.input.len()? + lepton_nn::engine::scratch_bytes(&layer) + activation_bytes };
        layers.push(LayerCost {
            index: i,
            op: Op::from_code(rec.op).map_or("?", Op::name),
            input: dims(rec.input),
            output: dims(rec.output),
            parameters,
            macs,
            weight_bytes,
            activation_bytes,
            live_bytes,
            instructions: None,
        });
    }
    let mut weight_layouts: Vec<&'static str> = (0..model.layer_count() as u16)
        .map(|i| model.record(i))
        .filter(|r| r.weights.len > 0)
        .map(|r| match lepton_nn::WeightLayout::from_code(r.weight_layout) {
            Some(lepton_nn::WeightLayout::Canonical) => "canonical",
            Some(lepton_nn::WeightLayout::Oc4Quads) => "int8",
            Some(lepton_nn::WeightLayout::Oc4PairsI16) => "i16",
            None => "?",
        })
        .collect();
    weight_layouts.dedup();
    Ok(Report {
        instructions_per_inference: None,
        weight_layouts,
        parameters: layers.iter().map(|l| l.parameters).sum(),
        macs: layers.iter().map(|l| l.macs).sum(),
        weight_bytes: layers.iter().map(|l| l.weight_bytes).sum(),
        model_bytes: model.byte_len(),
        arena_bytes: engine.arena_bytes(),
        layers,
    })
}

pub fn print_table(r: &Report) {
    let shape = |d: [u16; 3]| format!("{}x{}x{}", d[0], d[1], d[2]);
    println!(
        "{:>2}  {:<16} {:>10} {:>10} {:>8} {:>11} {:>9} {:>9} {:>9}{}",
        "#", "op", "input", "output", "params", "MACs", "weight B", "act B", "live B",
        if r.layers.iter().any(|l| l.instructions.is_some()) { "  instructions" } else { "" }
    );
    for l in &r.layers {
        println!(
            "{:>2}  {:<16} {:>10} {:>10} {:>8} {:>11} {:>9} {:>9} {:>9}{}",
            l.index, l.op, shape(l.input), shape(l.output), l.parameters, l.macs, l.weight_bytes, l.activation_bytes, l.live_bytes,
            l.instructions.map(|n| format!("  {n:>12}")).unwrap_or_default()
        );
    }
    println!("{:>2}  {:<16} {:>10} {:>10} {:>8} {:>11} {:>9}", "", "total", "", "", r.parameters, r.macs, r.weight_bytes);
    println!(
        "model file {} bytes (weights stored as {}); arena {} bytes (optimized engine: largest input + scratch + output of a step)",
        r.model_bytes,
        r.weight_layouts.join(", "),
        r.arena_bytes
    );
    if let Some(n) = r.instructions_per_inference {
        println!("device: {n} instructions per inference (cargo xtask bench; a fused conv2d+max_pool2d is charged to the conv)");
    }
}
