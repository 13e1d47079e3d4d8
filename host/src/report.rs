//! `lepton report`: the cost-benefit table of a Lepton model — per layer op, shapes, parameters,
//! MACs, weight bytes, activation bytes — and the arena the engine plans.

use anyhow::{anyhow, Result};
use lepton_nn::format::{Layer, Model, Op};
use lepton_nn::{Engine, Shape};
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
    /// Arena bytes live while this layer runs: input + scratch + output.
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
}

fn dims(s: Shape) -> [u16; 3] {
    [s.h, s.w, s.c]
}

pub fn report(blob: &[u8]) -> Result<Report> {
    let model = Model::parse(blob).map_err(|e| anyhow!("{e}"))?;
    let engine = Engine::new(model).map_err(|e| anyhow!("{e}"))?;
    let mut layers = Vec::new();
    for i in 0..model.layer_count() {
        let rec = model.record(i as u16);
        let layer = model.layer(i).map_err(|e| anyhow!("{e}"))?;
        let (parameters, macs) = match &layer {
            Layer::Conv2d(p) => (
                p.weights.len() + p.bias.len(),
                rec.output.len()? as u64 * p.kernel_h as u64 * p.kernel_w as u64 * p.input.c as u64,
            ),
            Layer::FullyConnected(p) => (p.weights.len() + p.bias.len(), (p.input_len * p.output_len) as u64),
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
    Ok(Report {
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
    println!("model file {} bytes; arena {} bytes (largest live input + scratch + output)", r.model_bytes, r.arena_bytes);
}
