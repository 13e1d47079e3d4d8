//! `cargo xtask pareto`: the cost–accuracy frontier, measured on the device. Trains a grid of
//! architectures (cached by architecture + recipe + seed + the training code), quantizes each three ways (`compact`:
//! int8, fewest bytes of int8; `fast`: fewest instructions; `int4`: 4-bit weights), judges each on the 10,000
//! test images on the host, runs each on the QEMU board (instructions, RAM, and device = host
//! on 200 images), and writes `pareto.json` (one record per point, the fronts marked) and
//! `pareto.svg`/`.png`. A full run also refreshes `models/mnist-tiny/`: the smallest point of the
//! bytes front whose integer accuracy is at least 99.0%.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cli::{lepton, lepton_output};
use crate::{firmware, preflight, qemu, root};

/// One trained network of the grid.
struct Variant {
    name: &'static str,
    /// The architecture file's JSON (`None`: the seed CNN, `lepton train`'s default).
    arch: Option<Value>,
    epochs: usize,
    /// Extra `lepton train` flags of the recipe, and its name.
    recipe: (&'static [&'static str], &'static str),
    /// Quantization-aware fine-tuning of another grid point's float model: its name and the
    /// weight bits (`epochs` is then the fine-tuning's).
    qat: Option<(&'static str, u32)>,
}

impl Variant {
    fn trained(name: &'static str, arch: Option<Value>, epochs: usize, recipe: (&'static [&'static str], &'static str)) -> Variant {
        Variant { name, arch, epochs, recipe, qat: None }
    }

    fn qat(name: &'static str, base: &'static str, bits: u32) -> Variant {
        Variant { name, arch: None, epochs: 2, recipe: (&[], "QAT fine-tune, 2 epochs, cosine from 1e-4"), qat: Some((base, bits)) }
    }

    /// The weight layouts this point is quantized with (`int4`: 4-bit weights).
    fn layouts(&self) -> &'static [&'static str] {
        match self.qat {
            Some((_, 4)) => &["int4"],
            Some(_) => &["compact", "fast"],
            None => &["compact", "fast", "int4"],
        }
    }
}

const SEED_RECIPE: (&[&str], &str) = (&[], "seed (Adam 1e-3 constant)");
const LONG_RECIPE: (&[&str], &str) = (&["--schedule", "cosine", "--shift", "2"], "cosine decay, shifts of up to 2 px");

fn conv(channels: usize) -> Value {
    json!({ "type": "conv", "channels": channels, "kernel": 3, "activation": "relu" })
}

fn pool() -> Value {
    json!({ "type": "max_pool", "size": 2 })
}

fn dense(units: usize, relu: bool) -> Value {
    json!({ "type": "dense", "units": units, "activation": if relu { "relu" } else { "none" } })
}

/// The seed CNN's layers at `width` times its channels and units.
fn seed_at(name: &str, width: f64) -> Value {
    let c = |n: f64| (n * width).round() as usize;
    json!({ "name": name, "layers": [conv(c(32.0)), pool(), conv(c(64.0)), pool(), conv(c(64.0)), { "type": "flatten" }, dense(c(64.0), true), dense(10, false)] })
}

fn grid() -> Vec<Variant> {
    let tiny = json!({ "name": "tiny-3conv", "layers": [conv(8), pool(), conv(16), pool(), conv(32), { "type": "flatten" }, dense(10, false)] });
    let two = json!({ "name": "two-conv", "layers": [conv(8), pool(), conv(16), pool(), { "type": "flatten" }, dense(10, false)] });
    vec![
        Variant::trained("seed-w1", None, 5, SEED_RECIPE),
        Variant::trained("seed-w1-long", Some(seed_at("seed-w1-long", 1.0)), 15, LONG_RECIPE),
        Variant::trained("seed-w0.5", Some(seed_at("seed-w0.5", 0.5)), 20, LONG_RECIPE),
        Variant::trained("seed-w0.25", Some(seed_at("seed-w0.25", 0.25)), 20, LONG_RECIPE),
        Variant::trained("tiny-3conv", Some(tiny), 20, LONG_RECIPE),
        Variant::trained("two-conv", Some(two), 20, LONG_RECIPE),
        Variant::qat("seed-w1-qat4", "seed-w1", 4),
        Variant::qat("seed-w1-long-qat4", "seed-w1-long", 4),
        Variant::qat("seed-w0.5-qat4", "seed-w0.5", 4),
        Variant::qat("seed-w0.25-qat4", "seed-w0.25", 4),
        Variant::qat("tiny-3conv-qat8", "tiny-3conv", 8),
        Variant::qat("tiny-3conv-qat4", "tiny-3conv", 4),
        Variant::qat("two-conv-qat4", "two-conv", 4),
    ]
}

pub struct Options {
    pub only: Vec<String>,
    pub out: PathBuf,
    pub json: bool,
    /// A quick run (CI): 2,000 training images, one epoch, 1,000 test images.
    pub quick: bool,
    pub images: usize,
}

pub fn pareto(opts: &Options) -> Result<()> {
    preflight::check(&preflight::ALL)?;
    let grid: Vec<Variant> = grid().into_iter().filter(|v| opts.only.is_empty() || opts.only.iter().any(|o| o == v.name)).collect();
    if grid.is_empty() {
        bail!("--only {:?} names no point of the grid (it has: {})", opts.only, self::grid().iter().map(|v| v.name).collect::<Vec<_>>().join(", "));
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    lepton_output(&["data"])?;
    let elf = firmware::build(&[])?;
    let cache = RunCache { dir: crate::target_dir().join("pareto"), code: training_code_hash()? };
    let total: usize = grid.iter().map(|v| v.layouts().len()).sum();
    let mut records = Vec::new();
    for (i, v) in grid.iter().enumerate() {
        eprintln!("\nxtask pareto: [{}/{}] {} ({} epochs, {})", i + 1, grid.len(), v.name, if opts.quick { 1 } else { v.epochs }, v.recipe.1);
        let float_dir = match v.qat {
            None => train(v, &cache, opts.quick)?,
            Some((base, bits)) => {
                let base = self::grid().into_iter().find(|b| b.name == base).context("a QAT point's base is in the grid")?;
                let base_dir = train(&base, &cache, opts.quick)?;
                finetune(v, &base_dir, bits, &cache, opts.quick)?
            }
        };
        for layout in v.layouts() {
            eprintln!("xtask pareto: point {}/{total}: {}/{layout}", records.len() + 1, v.name);
            records.push(measure(v, &float_dir, layout, &elf, opts)?);
        }
    }
    let mut all = merge_with_existing(&opts.out.join("pareto.json"), records, opts.only.is_empty())?;
    let complete = self::grid().iter().all(|v| v.layouts().iter().all(|l| all.iter().any(|p| p["name"] == json!(format!("{}/{l}", v.name)))));
    mark_fronts(&mut all);
    let path = opts.out.join("pareto.json");
    lepton_core::files::write_atomically(&path, serde_json::to_string_pretty(&all)?.as_bytes())?;
    lepton(&["plot-pareto", "--json", path_str(&path)?])?;
    if complete && !opts.quick {
        promote_tiny(&all, &root().join("models/mnist-tiny"))?;
    }
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print_table(&all);
    }
    Ok(())
}

/// Train the variant (or reuse a finished run of the same architecture, recipe and training
/// code).
fn train(v: &Variant, cache: &RunCache, quick: bool) -> Result<PathBuf> {
    let epochs = if quick { 1 } else { v.epochs };
    let mut args: Vec<String> = vec!["--epochs".into(), epochs.to_string(), "--seed".into(), "1".into()];
    args.extend(v.recipe.0.iter().map(|s| s.to_string()));
    if quick {
        args.extend(["--train-images", "2000", "--test-images", "1000"].map(String::from));
    }
    let arch_text = v.arch.as_ref().map(serde_json::to_string_pretty).transpose()?;
    cached_run(cache, v.name, &format!("{arch_text:?}|{args:?}"), epochs, "training", |dir| {
        let mut cmd: Vec<String> = vec!["train".into(), "--out".into(), path_str(dir)?.into()];
        std::fs::create_dir_all(dir)?;
        if let Some(text) = &arch_text {
            let spec = dir.join("spec.json");
            std::fs::write(&spec, text)?;
            cmd.extend(["--arch".into(), path_str(&spec)?.into()]);
        }
        cmd.extend(args.iter().cloned());
        Ok(cmd)
    })
}

/// Fine-tune the float model in `base_dir` with `bits`-bit quantization-aware training (or reuse
/// a finished run of the same base, bits, epochs and training code).
fn finetune(v: &Variant, base_dir: &Path, bits: u32, cache: &RunCache, quick: bool) -> Result<PathBuf> {
    let epochs = if quick { 1 } else { v.epochs };
    let mut args: Vec<String> = ["--epochs".to_string(), epochs.to_string(), "--qat-bits".into(), bits.to_string()].into();
    if quick {
        args.extend(["--train-images", "2000", "--test-images", "1000"].map(String::from));
    }
    cached_run(cache, v.name, &format!("{}|{args:?}", base_dir.display()), epochs, "fine-tuning", |dir| {
        let mut cmd: Vec<String> = vec!["finetune".into(), "--qat".into(), "--float".into(), path_str(base_dir)?.into(), "--out".into(), path_str(dir)?.into()];
        cmd.extend(args.iter().cloned());
        Ok(cmd)
    })
}

/// Where finished training runs are kept, and the hash of the code they depend on
/// ([`training_code_hash`], read once per `cargo xtask pareto`).
struct RunCache {
    dir: PathBuf,
    code: String,
}

/// The run directory of `name` for `what` (its inputs, and the code training depends on, hashed into the
/// name): reused when it finished `epochs` epochs, else cleared and made by the `lepton` command
/// `command` gives for it.
fn cached_run(cache: &RunCache, name: &str, what: &str, epochs: usize, kind: &str, command: impl FnOnce(&Path) -> Result<Vec<String>>) -> Result<PathBuf> {
    let key = lepton_core::data::sha256_hex(format!("{what}|{}", cache.code).as_bytes());
    let dir = cache.dir.join(format!("{name}-{}", &key[..12]));
    if finished(&dir, epochs) {
        eprintln!("xtask pareto: reusing the {kind} run in {}", dir.display());
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let cmd = command(&dir)?;
    lepton_output(&cmd.iter().map(String::as_str).collect::<Vec<_>>())?;
    Ok(dir)
}

/// SHA-256 of the code a training or fine-tuning run depends on (training, the float net and
/// its export, quantization as QAT simulates it, the data loader), each file's path hashed with
/// its bytes, so that a change to any of it retrains.
fn training_code_hash() -> Result<String> {
    let root = root();
    let mut files: Vec<PathBuf> = vec![root.join("host/src/float_net.rs"), root.join("core/src/data.rs")];
    for dir in ["host/src/train", "host/src/quantize"] {
        let dir = root.join(dir);
        let rs = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?.filter_map(|e| e.ok().map(|e| e.path()));
        files.extend(rs.filter(|p| p.extension().is_some_and(|x| x == "rs")));
    }
    files.sort();
    let mut all = Vec::new();
    for f in &files {
        all.extend(f.strip_prefix(&root).unwrap_or(f).to_string_lossy().as_bytes());
        all.push(0);
        all.extend(std::fs::read(f).with_context(|| format!("reading {}", f.display()))?);
    }
    Ok(lepton_core::data::sha256_hex(&all))
}

/// Whether `dir` holds a training run that finished `epochs` epochs.
fn finished(dir: &Path, epochs: usize) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("metrics.json")) else { return false };
    let Ok(state) = serde_json::from_str::<Value>(&text) else { return false };
    dir.join("model.bpk").is_file() && state["epochs"].as_array().is_some_and(|e| e.len() == epochs)
}

fn measure(v: &Variant, float_dir: &Path, layout: &str, elf: &Path, opts: &Options) -> Result<Value> {
    let lpk = float_dir.join(format!("{layout}.lpk"));
    let f = path_str(float_dir)?;
    let m = path_str(&lpk)?;
    lepton(&["quantize", "--float", f, "--out", m, "--weights", layout])?;
    let test_images = if opts.quick { "1000" } else { "10000" };
    // The optimized kernels: bit-exact with the reference ones (tests), several times faster.
    let eval: Value = serde_json::from_str(&lepton_output(&["eval", "--model", m, "--float", f, "--json", "--optimized", "--images", test_images])?).context("lepton eval --json")?;
    let report: Value = serde_json::from_str(&lepton_output(&["report", "--model", m, "--json"])?).context("lepton report --json")?;
    let bench = crate::bench::bench(&lpk, None, opts.images, elf, crate::bench::Output::Quiet, None)?;
    let device = qemu::run(&lpk, None, Some(if opts.quick { 50 } else { 200 }), elf, true, true, lepton_core::device::Link::Semihosting)?;
    if let Some(e) = device.failure {
        return Err(e.context(format!("{} on the QEMU board", lpk.display())));
    }
    let device_images = device.json["images"].clone();
    if device.mismatches != 0 {
        bail!("{}: {} of {device_images} device results differ from the host", lpk.display(), device.mismatches);
    }
    let arch: Value = serde_json::from_str(&std::fs::read_to_string(float_dir.join("arch.json"))?)?;
    let training: Value = serde_json::from_str(&std::fs::read_to_string(float_dir.join("metrics.json"))?)?;
    Ok(json!({
        "name": format!("{}/{layout}", v.name),
        "arch": arch,
        "recipe": v.recipe.1,
        "epochs": training["epochs"].as_array().map_or(0, Vec::len),
        "weights": layout,
        "weight_bits": if layout == "int4" { 4 } else { 8 },
        "qat": v.qat.is_some(),
        "params": report["parameters"],
        "model_bytes": bench["model_bytes"],
        "instructions_per_inference": bench["instructions_per_inference"],
        "cycles_estimate": bench["cycles_estimate"],
        "peak_ram_bytes": bench["peak_ram_bytes"],
        "float_accuracy": eval["float_accuracy"],
        "int8_accuracy": eval["int8_accuracy"],
        "test_images": eval["images"],
        "device_check": { "images": device_images, "mismatches": device.mismatches },
        // Relative to the workspace where it can be (the default cache: target/pareto/).
        "float_dir": float_dir.strip_prefix(root()).unwrap_or(float_dir).display().to_string(),
    }))
}

/// With `--only`, the new records replace those of the same name in an existing file.
fn merge_with_existing(path: &Path, records: Vec<Value>, full: bool) -> Result<Vec<Value>> {
    if full || !path.is_file() {
        return Ok(records);
    }
    let mut all: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path)?).with_context(|| format!("parsing {}", path.display()))?;
    for r in records {
        match all.iter_mut().find(|a| a["name"] == r["name"]) {
            Some(a) => *a = r,
            None => all.push(r),
        }
    }
    Ok(all)
}

/// A point is on a front when no other point is at least as accurate and at most as costly,
/// and better in one of the two.
fn mark_fronts(points: &mut [Value]) {
    for key in ["model_bytes", "instructions_per_inference"] {
        let values: Vec<(f64, f64)> = points.iter().map(|p| (p[key].as_f64().unwrap_or(f64::MAX), p["int8_accuracy"].as_f64().unwrap_or(0.0))).collect();
        for (i, p) in points.iter_mut().enumerate() {
            let (cost, acc) = values[i];
            let dominated = values.iter().enumerate().any(|(j, &(c, a))| j != i && c <= cost && a >= acc && (c < cost || a > acc));
            let field = if key == "model_bytes" { "front_bytes" } else { "front_instructions" };
            p[field] = json!(!dominated);
        }
    }
}

/// Copy the smallest bytes-front point with integer accuracy >= 99.0% to `models/mnist-tiny/`.
fn promote_tiny(points: &[Value], dir: &Path) -> Result<()> {
    let best = points
        .iter()
        .filter(|p| p["front_bytes"] == json!(true) && p["int8_accuracy"].as_f64().unwrap_or(0.0) >= 0.99)
        .min_by_key(|p| p["model_bytes"].as_u64().unwrap_or(u64::MAX));
    let Some(best) = best else {
        eprintln!("xtask pareto: no point reaches 99.0% integer accuracy; models/mnist-tiny left as it is");
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    let float_dir = root().join(best["float_dir"].as_str().unwrap_or_default());
    let layout = best["weights"].as_str().unwrap_or("compact");
    std::fs::copy(float_dir.join(format!("{layout}.lpk")), dir.join("int8.lpk"))?;
    for f in ["arch.json", "metrics.json", "model.bpk", "training.svg", "training.png"] {
        std::fs::copy(float_dir.join(f), dir.join(f)).with_context(|| format!("copying {f}"))?;
    }
    let mut point = best.clone();
    point["float_dir"] = json!("models/mnist-tiny");
    lepton_core::files::write_atomically(&dir.join("point.json"), serde_json::to_string_pretty(&point)?.as_bytes())?;
    eprintln!("xtask pareto: models/mnist-tiny is now {} ({} bytes, {:.2}%)", best["name"], best["model_bytes"], 100.0 * best["int8_accuracy"].as_f64().unwrap_or(0.0));
    Ok(())
}

fn print_table(points: &[Value]) {
    println!("{:<22} {:>8} {:>10} {:>12} {:>10} {:>8} {:>8}  front", "point", "params", "bytes", "instructions", "ram", "float", "int");
    for p in points {
        let front = match (p["front_bytes"] == json!(true), p["front_instructions"] == json!(true)) {
            (true, true) => "bytes, instructions",
            (true, false) => "bytes",
            (false, true) => "instructions",
            _ => "",
        };
        let n = |k: &str| p[k].as_u64().map_or("?".to_string(), |v| v.to_string());
        println!(
            "{:<22} {:>8} {:>10} {:>12} {:>10} {:>7.2}% {:>7.2}%  {front}",
            p["name"].as_str().unwrap_or("?"),
            n("params"),
            n("model_bytes"),
            n("instructions_per_inference"),
            n("peak_ram_bytes"),
            100.0 * p["float_accuracy"].as_f64().unwrap_or(0.0),
            100.0 * p["int8_accuracy"].as_f64().unwrap_or(0.0)
        );
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}
