//! `cargo xtask bench`: exact instruction counts per layer and per inference on QEMU
//! (TIM2 under `-icount shift=0`), peak RAM, stack, code and model bytes, next to the
//! CMSIS-NN and TFLM reference figures for the same model (`../shared/NUMBERS.md`).

use std::path::Path;

use anyhow::{Context, Result};
use lepton::data::{self, Part, PIXELS};
use lepton_nn::{Model, Op};
use serde_json::json;

/// CMSIS-NN (gcc 12.2 -O3, DSP path) on the same model under the same QEMU: instructions per inference.
const CMSIS_NN_INSTRUCTIONS: f64 = 6_832_912.0;
/// TFLM's smallest arena for this model (bytes).
const TFLM_ARENA_BYTES: f64 = 31_984.0;
/// CMSIS-NN kernel code (.text bytes).
const CMSIS_NN_CODE_BYTES: f64 = 12_436.0;

pub fn bench(model_path: &Path, images: usize, elf: &Path, as_json: bool) -> Result<serde_json::Value> {
    let blob = std::fs::read(model_path).with_context(|| format!("reading {}", model_path.display()))?;
    let model = Model::parse(&blob).map_err(|e| anyhow::anyhow!("{}: {e}", model_path.display()))?;
    let test = data::load_part(None, Part::Test)?.truncated(images);
    let run = lepton::qemu::run(elf, &blob, &test.images, PIXELS, 1)?;
    let n = run.results.len().max(1) as f64;
    let mean = |f: &dyn Fn(&lepton::qemu::DeviceResult) -> u32| run.results.iter().map(|r| f(r) as f64).sum::<f64>() / n;
    let total = mean(&|r| r.instructions);

    // Per layer; a step that fused several layers reports under their joined names.
    let mut layers = Vec::new();
    let mut pending: Vec<&str> = Vec::new();
    for i in 0..model.layer_count() {
        let op = Op::from_code(model.record(i as u16).op).map_or("?", Op::name);
        pending.push(op);
        let count = mean(&|r| r.per_layer.get(i).copied().unwrap_or(0));
        if count > 0.0 {
            layers.push(json!({ "name": pending.join("+"), "first_layer": i + 1 - pending.len(), "instructions": count.round() as u64 }));
            pending.clear();
        }
    }
    let elf_bytes = std::fs::read(elf)?;
    // Inference code: the engine and every kernel compiled in (used by this model or not), as
    // CMSIS-NN's figure counts its whole kernel library; model loading (parsing and validation,
    // `format`) is reported apart, as TFLM's interpreter is not in CMSIS-NN's figure.
    let is_loader = |name: &str| name.contains("lepton_nn6format");
    let code_bytes = lepton::qemu::symbol_bytes(&elf_bytes, |name| (name.contains("lepton_nn") || name.contains("lepton_firmware5infer")) && !is_loader(name))?;
    let loader_bytes = lepton::qemu::symbol_bytes(&elf_bytes, is_loader)?;
    let report = json!({
        "model": model_path.display().to_string(),
        "images": run.results.len(),
        "instructions_per_inference": total.round() as u64,
        "layers": layers,
        "peak_ram_bytes": run.arena_bytes,
        "stack_peak_bytes": run.stack_peak_bytes,
        "code_bytes": code_bytes,
        "model_loader_code_bytes": loader_bytes,
        "model_bytes": run.model_bytes,
        "reference": {
            "cmsis_nn_instructions": CMSIS_NN_INSTRUCTIONS as u64,
            "tflm_arena_bytes": TFLM_ARENA_BYTES as u64,
            "cmsis_nn_code_bytes": CMSIS_NN_CODE_BYTES as u64,
            "instructions_vs_cmsis_nn": total / CMSIS_NN_INSTRUCTIONS,
            "peak_ram_vs_tflm_arena": run.arena_bytes as f64 / TFLM_ARENA_BYTES,
            "code_vs_cmsis_nn": code_bytes as f64 / CMSIS_NN_CODE_BYTES,
        },
    });
    // Beside the model, for `lepton report`.
    let sidecar = model_path.with_extension("lpk.bench.json");
    std::fs::write(&sidecar, serde_json::to_string_pretty(&report)?)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report, total, run.arena_bytes as f64, code_bytes as f64);
        eprintln!("(written to {})", sidecar.display());
    }
    Ok(report)
}

fn print_table(r: &serde_json::Value, total: f64, arena: f64, code: f64) {
    println!("{:<24} {:>12} {:>8}", "layer", "instructions", "share");
    for l in r["layers"].as_array().into_iter().flatten() {
        let n = l["instructions"].as_f64().unwrap_or(0.0);
        println!("{:<24} {:>12} {:>7.1}%", l["name"].as_str().unwrap_or("?"), n as u64, 100.0 * n / total.max(1.0));
    }
    println!("{:<24} {:>12}   ({:.2}x CMSIS-NN's {}; {:.3} per MAC)", "whole inference", total as u64, total / CMSIS_NN_INSTRUCTIONS, CMSIS_NN_INSTRUCTIONS as u64, total / 2_794_240.0);
    println!("peak RAM (activations + scratch) {} bytes  ({:.2}x TFLM's arena of {})", arena as u64, arena / TFLM_ARENA_BYTES, TFLM_ARENA_BYTES as u64);
    println!("stack peak                       {} bytes (painted)", r["stack_peak_bytes"]);
    println!("inference code                   {} bytes  ({:.2}x CMSIS-NN's {})", code as u64, code / CMSIS_NN_CODE_BYTES, CMSIS_NN_CODE_BYTES as u64);
    println!("model                            {} bytes", r["model_bytes"]);
}
