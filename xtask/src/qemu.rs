//! `cargo xtask qemu`: the firmware on QEMU over the MNIST test set (or the inputs of a `.npy`
//! file), every logit and output compared with the host running the same model through
//! `lepton-nn`'s reference kernels.

use std::path::Path;

use anyhow::{bail, Context, Result};
use lepton_core::device::{self, FirmwareExit, Link};
use serde_json::json;

use crate::inputs;

pub struct QemuReport {
    pub json: serde_json::Value,
    pub mismatches: usize,
    /// Why the run failed (the firmware's exit), when it did; the JSON says it too.
    pub failure: Option<anyhow::Error>,
}

/// `in_partition`: load the model into the flash partition (false for a firmware that embeds it).
pub fn run(model_path: &Path, npy: Option<&Path>, images: Option<usize>, elf: &Path, host_check: bool, in_partition: bool, link: Link) -> Result<QemuReport> {
    let model = std::fs::read(model_path).with_context(|| format!("reading {}", model_path.display()))?;
    let parsed = if host_check { Some(lepton_core::eval::parse_model(&model, &model_path.display().to_string())?) } else { None };
    let inputs = inputs::load(parsed.as_ref(), npy, images)?;
    let host = if host_check {
        eprintln!("xtask: host inference on {} inputs (reference kernels) ...", inputs.count());
        let as_i8: Vec<i8> = inputs.bytes.iter().map(|&b| b as i8).collect();
        Some(lepton_core::eval::run_inputs(&model, &as_i8, false)?)
    } else {
        None
    };
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get()).min(inputs.count().max(1));
    eprintln!("xtask: device inference on {} inputs (QEMU netduinoplus2, {jobs} instances, -icount shift=0, link {}) ...", inputs.count(), link.name());
    let started = std::time::Instant::now();
    let device = match device::run_over(link, elf, in_partition.then_some(&model[..]), &inputs.bytes, inputs.len, jobs) {
        Ok(d) => d,
        Err(e) => return Ok(failed(e, inputs.count(), link)),
    };
    let seconds = started.elapsed().as_secs_f64();

    let mismatches = host.as_ref().map_or(0, |h| device::mismatches(h, &device.results));
    let accuracy = |classes: &mut dyn Iterator<Item = usize>| {
        inputs.labels.as_ref().map(|labels| classes.zip(labels).filter(|(c, &l)| *c == l as usize).count() as f64 / labels.len().max(1) as f64)
    };
    let instructions: Vec<u64> = device.results.iter().map(|r| r.instructions as u64).collect();
    let elf_bytes = std::fs::read(elf)?;
    let json = json!({
        "images": inputs.count(),
        "accuracy": accuracy(&mut device.results.iter().map(|r| r.class as usize)),
        "host_accuracy": host.as_ref().and_then(|h| accuracy(&mut h.logits.iter().map(|l| lepton_nn::kernels::argmax_s8(l).unwrap_or(0)))),
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
        "firmware_exit": 0,
        "firmware_exit_meaning": device::describe_exit(0),
        "link": link.name(),
    });
    Ok(QemuReport { json, mismatches, failure: None })
}

/// The report of a run the firmware ended with an error (or that could not start).
fn failed(e: anyhow::Error, images: usize, link: Link) -> QemuReport {
    let exit = e.downcast_ref::<FirmwareExit>();
    let json = json!({
        "images": images,
        "mismatches": serde_json::Value::Null,
        "firmware_exit": exit.and_then(|x| x.code),
        "firmware_exit_meaning": exit.map_or("the firmware did not run", |x| x.meaning()),
        "link": link.name(),
    });
    QemuReport { json, mismatches: 0, failure: Some(e) }
}

pub fn print(report: &QemuReport, as_json: bool) -> Result<()> {
    let j = &report.json;
    if as_json {
        println!("{}", serde_json::to_string_pretty(j)?);
    } else if report.failure.is_none() {
        println!("inputs                 {}", j["images"]);
        if let Some(acc) = j["accuracy"].as_f64() {
            println!("device accuracy        {acc:.4}  (host {:.4})", j["host_accuracy"].as_f64().unwrap_or(0.0));
        }
        println!("mismatches             {}  (inputs whose device logits or outputs differ from the host's in any bit)", j["mismatches"]);
        let ipi = &j["instructions_per_inference"];
        println!("instructions/inference mean {:.0}, min {}, max {}  (TIM2 under -icount shift=0)", ipi["mean"].as_f64().unwrap_or(0.0), ipi["min"], ipi["max"]);
        println!("stack peak             {} bytes (painted)", j["stack_peak_bytes"]);
        println!("arena                  {} bytes", j["arena_bytes"]);
        println!("flash: code {} bytes, model {} bytes", j["flash_code_bytes"], j["flash_model_bytes"]);
        println!("wall time              {:.1} s", j["seconds"].as_f64().unwrap_or(0.0));
    }
    if let Some(e) = &report.failure {
        bail!("{e:#}");
    }
    if report.mismatches > 0 {
        bail!("{} inputs differ between device and host", report.mismatches);
    }
    Ok(())
}
