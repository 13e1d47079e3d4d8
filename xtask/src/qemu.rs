//! `cargo xtask qemu`: the firmware on QEMU over the MNIST test set, every logit compared with
//! the host running the same model through `lepton-nn`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use lepton_core::data::{self, Part, PIXELS};
use lepton_core::device;
use serde_json::json;

pub struct QemuReport {
    pub json: serde_json::Value,
    pub mismatches: usize,
}

/// `in_partition`: load the model into the flash partition (false for a firmware that embeds it).
pub fn run(model_path: &Path, images: Option<usize>, elf: &Path, host_check: bool, in_partition: bool) -> Result<QemuReport> {
    let model = std::fs::read(model_path).with_context(|| format!("reading {}", model_path.display()))?;
    let mut test = data::load_part(None, Part::Test)?;
    if let Some(n) = images {
        test = test.truncated(n);
    }
    let host = if host_check {
        lepton_core::eval::parse_model(&model, &model_path.display().to_string())?;
        eprintln!("xtask: host inference on {} images ...", test.len());
        lepton_core::eval::run_int8(&model, &test)?
    } else {
        lepton_core::eval::Int8Run { logits: Vec::new(), predictions: Vec::new() }
    };
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get()).min(test.len().max(1));
    eprintln!("xtask: device inference on {} images (QEMU netduinoplus2, {jobs} instances, -icount shift=0) ...", test.len());
    let started = std::time::Instant::now();
    let device = device::run(elf, in_partition.then_some(&model[..]), &test.images, PIXELS, jobs)?;
    let seconds = started.elapsed().as_secs_f64();

    let mismatches = if host_check { host.logits.iter().zip(&device.results).filter(|(h, d)| **h != d.logits).count() } else { 0 };
    let correct = device.results.iter().zip(&test.labels).filter(|(d, &l)| d.class == l as u16).count();
    let instructions: Vec<u64> = device.results.iter().map(|r| r.instructions as u64).collect();
    let elf_bytes = std::fs::read(elf)?;
    let json = json!({
        "images": test.len(),
        "accuracy": correct as f64 / test.len() as f64,
        "host_accuracy": if host_check { Some(host.accuracy(&test.labels)) } else { None },
        "mismatches": mismatches,
        "instructions_per_inference": {
            "mean": instructions.iter().sum::<u64>() as f64 / instructions.len().max(1) as f64,
            "min": instructions.iter().min(),
            "max": instructions.iter().max(),
        },
        "stack_peak_bytes": device.stack_peak_bytes,
        "arena_bytes": device.arena_bytes,
        "flash_code_bytes": device::flash_code_bytes(&elf_bytes)?,
        "flash_model_bytes": device.model_bytes,
        "seconds": seconds,
    });
    Ok(QemuReport { json, mismatches })
}

pub fn print(report: &QemuReport, as_json: bool) -> Result<()> {
    let j = &report.json;
    if as_json {
        println!("{}", serde_json::to_string_pretty(j)?);
    } else {
        println!("images                 {}", j["images"]);
        println!("device accuracy        {:.4}  (host {:.4})", j["accuracy"].as_f64().unwrap_or(0.0), j["host_accuracy"].as_f64().unwrap_or(0.0));
        println!("logit mismatches       {}  (images whose device logits differ from the host's in any bit)", j["mismatches"]);
        let ipi = &j["instructions_per_inference"];
        println!("instructions/inference mean {:.0}, min {}, max {}  (TIM2 under -icount shift=0)", ipi["mean"].as_f64().unwrap_or(0.0), ipi["min"], ipi["max"]);
        println!("stack peak             {} bytes (painted)", j["stack_peak_bytes"]);
        println!("arena                  {} bytes", j["arena_bytes"]);
        println!("flash: code {} bytes, model {} bytes", j["flash_code_bytes"], j["flash_model_bytes"]);
        println!("wall time              {:.1} s", j["seconds"].as_f64().unwrap_or(0.0));
    }
    if report.mismatches > 0 {
        bail!("{} images differ between device and host", report.mismatches);
    }
    Ok(())
}
