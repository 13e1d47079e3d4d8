//! `cargo xtask bench`: exact instruction counts per step and per inference on QEMU (TIM2 under
//! `-icount shift=0`), cycle estimates priced from the exact executed instruction mix
//! ([`lepton_core::cycles`]), peak RAM, stack, code and model bytes. Per-MAC figures use the model's own
//! MAC count; the CMSIS-NN and TFLM reference figures (`../shared/NUMBERS.md`) are shown only for
//! the model they were measured on, the seed CNN.

use std::path::Path;

use anyhow::{Context, Result};
use lepton_core::cycles::{self, Estimate, CLOCK_HZ};
use lepton_core::report::Report;
use lepton_nn::{Engine, Model, Plan};
use serde_json::json;

/// CMSIS-NN (gcc 12.2 -O3, DSP path) on the seed CNN under the same QEMU: instructions per inference.
const CMSIS_NN_INSTRUCTIONS: f64 = 6_832_912.0;
/// TFLM's smallest arena for the seed CNN (bytes).
const TFLM_ARENA_BYTES: f64 = 31_984.0;
/// CMSIS-NN kernel code (.text bytes).
const CMSIS_NN_CODE_BYTES: f64 = 12_436.0;

/// Layer output shapes (H, W, C) of the seed CNN, the model the references were measured on.
const SEED_CNN_SHAPES: [[u16; 3]; 9] =
    [[26, 26, 32], [13, 13, 32], [11, 11, 64], [5, 5, 64], [3, 3, 64], [1, 1, 576], [1, 1, 64], [1, 1, 10], [1, 1, 10]];

fn is_seed_cnn(report: &Report) -> bool {
    report.layers.len() == SEED_CNN_SHAPES.len() && report.layers.iter().zip(SEED_CNN_SHAPES).all(|(l, s)| l.output == s)
}

const CYCLE_MODEL: &str = "Cortex-M4 TRM timings over the executed instruction mix, zero wait states (no flash wait states, no ART accelerator); see lepton_core::cycles";

/// The inputs through the firmware under QEMU with Lepton's cycle plugin: the device's results
/// and, per plugin bucket (0: between steps; k: step k - 1), the priced instructions summed over
/// all inputs.
fn profiled_run(elf: &Path, elf_bytes: &[u8], blob: &[u8], inputs: &[u8], input_len: usize) -> Result<(lepton_core::device::DeviceRun, Estimate)> {
    let plugin = cycles::plugin(&crate::target_dir().join("lepton-cycle-plugin"))?;
    let (lo, hi) = cycles::code_range(elf_bytes)?;
    let work = tempfile::tempdir()?;
    let out = work.path().join("cycles.txt");
    let marker = |name: &str| cycles::symbol(elf_bytes, name);
    let arg = format!(
        "{},lo={lo:#x},hi={hi:#x},begin={:#x},end={:#x},step_begin={:#x},step_end={:#x},out={}",
        plugin.display(),
        marker("icount_start")?,
        marker("icount_stop")?,
        marker("icount_step_begin")?,
        marker("icount_step_end")?,
        out.display()
    );
    let run = lepton_core::device::run_with(elf, blob, inputs, input_len, &["-plugin".into(), arg])?;
    let profile = cycles::Profile::parse(&std::fs::read_to_string(&out).context("the cycle plugin wrote no profile")?)?;
    anyhow::ensure!(profile.intervals == run.results.len() as u64, "the cycle plugin saw {} inferences, the device reported {}", profile.intervals, run.results.len());
    Ok((run, cycles::price_elf(&profile, elf_bytes)?))
}

/// `--cycle-profile FILE`: per executed address, per inference, its function, executions and
/// estimated cycles, the costliest first.
fn write_cycle_profile(path: &Path, estimate: &Estimate, elf: &[u8], inferences: usize) -> Result<()> {
    let functions = lepton_core::device::functions(elf)?;
    let name = |addr: u64| functions.iter().rev().find(|f| f.0 <= addr && addr < f.0 + f.1).map_or("?", |f| f.2.as_str());
    let mut rows: Vec<_> = estimate.addresses.iter().collect();
    rows.sort_by_key(|(addr, p)| (std::cmp::Reverse(p.cycles), **addr));
    let n = inferences.max(1) as f64;
    let mut text = String::from("# address  executions/inference  cycles/inference  function\n");
    for (addr, p) in rows {
        text.push_str(&format!("{addr:#010x} {:>14.1} {:>14.1}  {}\n", p.instructions as f64 / n, p.cycles as f64 / n, name(*addr)));
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// What [`bench`] prints on stdout.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    /// Nothing (the caller reports): the JSON is returned and written beside the model.
    Quiet,
}

pub fn bench(model_path: &Path, npy: Option<&Path>, images: usize, elf: &Path, output: Output, cycle_profile: Option<&Path>) -> Result<serde_json::Value> {
    let blob = std::fs::read(model_path).with_context(|| format!("reading {}", model_path.display()))?;
    let model = Model::parse(&blob).map_err(|e| anyhow::anyhow!("{}: {e}", model_path.display()))?;
    let mut plan = Box::new(Plan::new());
    let engine = Engine::new(model, &mut plan).map_err(|e| anyhow::anyhow!("{}: {e}", model_path.display()))?;
    let cost = lepton_core::report::report(&blob)?;
    let inputs = crate::inputs::load(Some(&model), npy, Some(images))?;
    let elf_bytes = std::fs::read(elf)?;
    let (run, estimate) = profiled_run(elf, &elf_bytes, &blob, &inputs.bytes, inputs.len)?;
    if let Some(path) = cycle_profile {
        write_cycle_profile(path, &estimate, &elf_bytes, run.results.len())?;
    }
    let cycles = &estimate.buckets;
    let n = run.results.len().max(1) as f64;
    let mean = |f: &dyn Fn(&lepton_core::device::DeviceResult) -> u32| run.results.iter().map(|r| f(r) as f64).sum::<f64>() / n;
    let total = mean(&|r| r.instructions);
    let bucket = |bucket: u32| cycles.get(&bucket).copied().unwrap_or_default();
    let total_cycles: f64 = cycles.values().map(|p| p.cycles as f64).sum::<f64>() / n;
    let ms = |cycles: f64| cycles / CLOCK_HZ * 1e3;

    // Per step of the plan; a fused step is named by its layers joined and charged to one layer.
    let layers: Vec<_> = engine
        .steps()
        .map(|step| {
            let names: Vec<&str> = (step.first..=step.last).map(|i| cost.layers[i].op).collect();
            let count = mean(&|r| r.per_step.get(step.index).copied().unwrap_or(0));
            let macs: u64 = (step.first..=step.last).map(|i| cost.layers[i].macs).sum();
            let priced = bucket(step.index as u32 + 1);
            let cycles = priced.cycles as f64 / n;
            json!({
                "name": names.join("+"), "first_layer": step.charged_layer(), "instructions": count.round() as u64,
                "profiled_instructions": (priced.instructions as f64 / n).round() as u64,
                "macs": macs, "cycles_estimate": cycles.round() as u64, "ms_at_168mhz": ms(cycles),
            })
        })
        .collect();
    // Inference code: every function an inference can reach from the firmware's `infer` (the
    // engine's run loop and every kernel of every op, used by this model or not), as CMSIS-NN's
    // figure counts its whole kernel library. Model loading and planning (parsing, validation,
    // the memory plan: `Model::parse`, `Engine::new`) run once at boot and are reported apart.
    let inference = lepton_core::device::call_graph(&elf_bytes, &["lepton_firmware5infer"])?;
    let code_bytes: u64 = inference.iter().map(|f| f.size).sum();
    let mut by_size: Vec<_> = inference.iter().map(|f| json!({"function": f.name, "bytes": f.size})).collect();
    by_size.sort_by_key(|f| std::cmp::Reverse(f["bytes"].as_u64()));
    // Parse and plan, apart from what they share with the inference.
    let inference: std::collections::BTreeSet<String> = inference.into_iter().map(|f| f.name).collect();
    let loader_bytes: u64 = lepton_core::device::call_graph(&elf_bytes, &crate::INFERENCE_ROOTS[..2])?.iter().filter(|f| !inference.contains(&f.name)).map(|f| f.size).sum();
    let mut report = json!({
        "model": model_path.display().to_string(),
        "images": run.results.len(),
        "instructions_per_inference": total.round() as u64,
        "macs": cost.macs,
        "instructions_per_mac": total / cost.macs.max(1) as f64,
        "cycles_estimate": total_cycles.round() as u64,
        "cycles_per_mac": total_cycles / cost.macs.max(1) as f64,
        "ms_at_168mhz": ms(total_cycles),
        "cycle_model": CYCLE_MODEL,
        "layers": layers,
        "peak_ram_bytes": run.arena_bytes,
        "stack_peak_bytes": run.stack_peak_bytes,
        "code_bytes": code_bytes,
        "model_loader_code_bytes": loader_bytes,
        "code_functions": by_size,
        "model_bytes": run.model_bytes,
    });
    if is_seed_cnn(&cost) {
        report["reference"] = json!({
            "cmsis_nn_instructions": CMSIS_NN_INSTRUCTIONS as u64,
            "tflm_arena_bytes": TFLM_ARENA_BYTES as u64,
            "cmsis_nn_code_bytes": CMSIS_NN_CODE_BYTES as u64,
            "instructions_vs_cmsis_nn": total / CMSIS_NN_INSTRUCTIONS,
            "peak_ram_vs_tflm_arena": run.arena_bytes as f64 / TFLM_ARENA_BYTES,
            "code_vs_cmsis_nn": code_bytes as f64 / CMSIS_NN_CODE_BYTES,
        });
    }
    // Beside the model, for `lepton report`.
    let sidecar = model_path.with_extension("lpk.bench.json");
    std::fs::write(&sidecar, serde_json::to_string_pretty(&report)?)?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            print_table(&report, total);
            eprintln!("(written to {})", sidecar.display());
        }
        Output::Quiet => {}
    }
    Ok(report)
}

fn print_table(r: &serde_json::Value, total: f64) {
    println!("{:<24} {:>12} {:>8} {:>12} {:>9} {:>9}", "step", "instructions", "share", "cycles est.", "cyc/MAC", "ms@168");
    for l in r["layers"].as_array().into_iter().flatten() {
        let n = l["instructions"].as_f64().unwrap_or(0.0);
        let c = l["cycles_estimate"].as_f64().unwrap_or(0.0);
        let per_mac = l["macs"].as_f64().filter(|&m| m > 0.0).map_or("-".to_string(), |m| format!("{:.3}", c / m));
        println!("{:<24} {:>12} {:>7.1}% {:>12} {:>9} {:>9.3}", l["name"].as_str().unwrap_or("?"), n as u64, 100.0 * n / total.max(1.0), c as u64, per_mac, l["ms_at_168mhz"].as_f64().unwrap_or(0.0));
    }
    let reference = &r["reference"];
    let vs = |key: &str, what: &str| match reference[key].as_f64() {
        Some(x) => format!("  ({x:.2}x {what})"),
        None => String::new(),
    };
    println!("{:<24} {:>12}   ({:.3} per MAC of {}){}", "whole inference", total as u64, r["instructions_per_mac"].as_f64().unwrap_or(0.0), r["macs"], vs("instructions_vs_cmsis_nn", "CMSIS-NN's 6,832,912"));
    println!(
        "cycle estimate                   {} cycles ({:.3} per MAC, {:.3} ms at 168 MHz; zero wait states, see README)",
        r["cycles_estimate"], r["cycles_per_mac"].as_f64().unwrap_or(0.0), r["ms_at_168mhz"].as_f64().unwrap_or(0.0)
    );
    println!("peak RAM (activations + scratch) {} bytes{}", r["peak_ram_bytes"], vs("peak_ram_vs_tflm_arena", "TFLM's arena of 31,984"));
    println!("stack peak                       {} bytes (painted)", r["stack_peak_bytes"]);
    println!("inference code                   {} bytes{}", r["code_bytes"], vs("code_vs_cmsis_nn", "CMSIS-NN's 12,436"));
    println!("model                            {} bytes", r["model_bytes"]);
}
