//! Build orchestration for Lepton (`cargo xtask ...`), the Rust convention for multi-target
//! workspaces: host crates build for the PC, the firmware for thumbv7em-none-eabihf.
//!
//! xtask stays thin: it depends on `lepton-core` (data, int8 evaluation, the QEMU harness) and
//! `lepton-nn`, never on burn, tract or probe-rs. Host work that needs those runs the `lepton`
//! CLI, which xtask builds on demand ([`cli`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use lepton_core::device::Link;

mod bench;
mod bench_train;
mod cli;
mod demo;
mod firmware;
mod inputs;
mod pareto;
mod preflight;
mod qemu;

/// The firmware's functions that parse, plan and run a model (see `firmware/src/main.rs`).
pub const INFERENCE_ROOTS: [&str; 3] = ["lepton_firmware5parse", "lepton_firmware10plan_model", "lepton_firmware5infer"];

/// The committed quantized MNIST model.
pub const DEFAULT_MODEL: &str = "models/mnist-cnn/int8.lpk";

#[derive(Parser)]
#[command(about = "Lepton build orchestration")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Seconds per training epoch: `lepton train` and, when TensorFlow is installed, the seed's Keras script.
    BenchTrain {
        #[arg(long, default_value_t = 1)]
        epochs: usize,
    },
    /// Benchmark the firmware on QEMU: instructions and estimated cycles per layer and per inference, RAM, stack, code, model bytes.
    Bench {
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: PathBuf,
        /// int8 inputs of the model's input shape (`N x ...` .npy; default: MNIST test images).
        #[arg(long)]
        inputs: Option<PathBuf>,
        /// Inputs to average over (counts vary by a few instructions with the data).
        #[arg(long, default_value_t = 20)]
        images: usize,
        #[arg(long)]
        json: bool,
        /// Also write the executed instructions and estimated cycles per address (per inference,
        /// costliest first, with their functions) to FILE.
        #[arg(long, value_name = "FILE")]
        cycle_profile: Option<PathBuf>,
    },
    /// The main job, end to end on the QEMU board: data, train, quantize, judge, firmware, device run.
    Demo {
        /// Reuse the committed model (models/mnist-cnn) instead of training (saves ~1 minute of training).
        #[arg(long)]
        reuse_model: bool,
        #[arg(long, default_value_t = 5)]
        epochs: usize,
        /// First N test images on the device (default: all 10,000).
        #[arg(long)]
        images: Option<usize>,
    },
    /// Build the firmware, run it on QEMU over the MNIST test set and compare every logit with the host.
    Qemu {
        /// The Lepton model to load into the model partition.
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: PathBuf,
        /// int8 inputs of the model's input shape (`N x ...` .npy; default: the MNIST test images).
        #[arg(long)]
        inputs: Option<PathBuf>,
        /// First N inputs (default: all).
        #[arg(long)]
        images: Option<usize>,
        #[arg(long)]
        json: bool,
        /// Run the device only, without the host comparison (for models the host refuses, e.g. to
        /// check that the firmware rejects a corrupt one).
        #[arg(long)]
        skip_host_check: bool,
        /// Build the firmware with the model embedded in the image (feature `embedded-model`)
        /// instead of loading it into the model partition.
        #[arg(long)]
        embedded: bool,
        /// How inputs and results travel: `semihosting` (host files, the `qemu` firmware) or
        /// `uart` (the `board` firmware's USART1 transport, on a TCP socket to QEMU).
        #[arg(long, value_enum, default_value_t = Link::Semihosting)]
        link: Link,
    },
    /// The cost-accuracy frontier: train a grid of networks, quantize each (compact and fast
    /// weights), judge on the host, measure on the QEMU board; writes pareto.json and
    /// pareto.svg/.png, and (full run) models/mnist-tiny.
    Pareto {
        /// Only these grid points (repeatable); their records replace those in an existing pareto.json.
        #[arg(long)]
        only: Vec<String>,
        #[arg(long, default_value = "models/pareto")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
        /// A quick run (CI): one epoch on 2,000 training images, 1,000 test images.
        #[arg(long)]
        quick: bool,
        /// Inputs each bench run averages over.
        #[arg(long, default_value_t = 5)]
        images: usize,
    },
    /// List every panic the firmware's inference call graph (model parse, planning, every kernel)
    /// can reach, with the callers that reach it; fails if there is any.
    NoPanic,
    /// Run every test: host, cross-crate (TFLM bit-exactness, MNIST) and QEMU end to end.
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Test { args } => test(&args),
        Cmd::BenchTrain { epochs } => bench_train::bench_train(epochs),
        Cmd::Bench { model, inputs, images, json, cycle_profile } => {
            preflight::check(&preflight::DEVICE)?;
            let elf = firmware::build(&[])?;
            bench::bench(&root().join(model), inputs.as_deref(), images, &elf, if json { bench::Output::Json } else { bench::Output::Table }, cycle_profile.as_deref()).map(|_| ())
        }
        Cmd::Demo { reuse_model, epochs, images } => demo::demo(reuse_model, epochs, images),
        Cmd::NoPanic => no_panic(),
        Cmd::Pareto { only, out, json, quick, images } => pareto::pareto(&pareto::Options { only, out: root().join(out), json, quick, images }),
        Cmd::Qemu { model, inputs, images, json, skip_host_check, embedded, link } => {
            preflight::check(&preflight::DEVICE)?;
            let model = root().join(model);
            let elf = match (link, embedded) {
                (Link::Uart, true) => bail!("--embedded builds the semihosting firmware; the UART link runs the board firmware with the model in the partition"),
                (Link::Uart, false) => firmware::build_board_on_qemu()?,
                (Link::Semihosting, true) => firmware::build_variant("embedded", true, &["embedded-model"], Some(&model))?,
                (Link::Semihosting, false) => firmware::build(&[])?,
            };
            let report = qemu::run(&model, inputs.as_deref(), images, &elf, !skip_host_check, !embedded, link)?;
            qemu::print(&report, json)
        }
    }
}

/// `cargo xtask no-panic`: the panics reachable from the firmware's parse, plan and infer (a
/// walk of the ELF's call graph, each call site with its source lines), then the link-time
/// proof: the firmware's `no-panic` build, whose panic handler calls an undefined symbol,
/// must link.
fn no_panic() -> Result<()> {
    let elf = firmware::build(&[])?;
    let bytes = std::fs::read(&elf)?;
    let panics = lepton_core::device::reachable_panics(&bytes, &INFERENCE_ROOTS)?;
    for p in &panics {
        // Where the call is in the source, inlined frames included (llvm-addr2line, if installed).
        let at = std::process::Command::new("llvm-addr2line").args(["-i", "-f", "-C", "-p", "-e"]).arg(&elf).arg(format!("{:#x}", p.site)).output();
        let at = at.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().replace('\n', "\n    ")).unwrap_or_default();
        println!("{:#010x} {} -> {}\n    {at}", p.site, p.caller, p.callee);
    }
    anyhow::ensure!(panics.is_empty(), "{} calls into panic entry points reachable from {}", panics.len(), INFERENCE_ROOTS.join(", "));
    println!("call graph: no panic reachable from {}", INFERENCE_ROOTS.join(", "));
    pc_relative_check(&bytes)?;
    firmware::build_variant("no-panic", true, &["no-panic"], None)
        .context("the no-panic build did not link: a panic is reachable from parse, plan_model or infer (its panic handler calls an undefined symbol)")?;
    println!("link proof: the no-panic firmware (parse, plan_model, infer; panic handler calling an undefined symbol) links");
    Ok(())
}

/// Every function that reads the word-aligned PC (ADR, LDR literal) starts on a word (see
/// `lepton_core::device::PcRelative`): a computed entry into an unrolled asm loop placed 2
/// bytes off a word computed garbage on the device (dot_rounds_i16, fixed by `.p2align 2`).
/// The kernel with that ADR must be among them, or the decoder missed it.
fn pc_relative_check(elf: &[u8]) -> Result<()> {
    let found = lepton_core::device::pc_relative_functions(elf)?;
    let misaligned: Vec<String> = found.iter().filter(|f| !f.is_word_aligned()).map(|f| format!("{} at {:#010x} (PC read at {:#010x})", f.name, f.address, f.site)).collect();
    anyhow::ensure!(misaligned.is_empty(), "functions that read the word-aligned PC (ADR/LDR literal) but start 2 bytes off a word, so a label in them resolves 2 bytes off: {}", misaligned.join("; "));
    anyhow::ensure!(found.iter().any(|f| f.name.contains("dot_rounds_i16")), "no ADR found in dot_rounds_i16: the PC-relative decoder (lepton_core::device::reads_aligned_pc) missed it");
    println!("alignment: {} functions read the word-aligned PC (ADR/LDR literal), every one on a word", found.len());
    Ok(())
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

/// The host target directory (`CARGO_TARGET_DIR` or `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

pub fn status(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn test(args: &[String]) -> Result<()> {
    preflight::check(&preflight::ALL)?;
    // One release build serves the data step and every test binary.
    eprintln!("xtask: building the workspace and its tests (a first build compiles burn, tract and probe-rs: ~20 min on 2 cores)");
    status(cargo().args(["build", "--release", "--workspace", "--all-targets"]))?;
    // That build made the CLI too: this process and every `cargo xtask` the tests start use it.
    std::env::set_var(cli::PREBUILT_ENV, cli::release_binary());
    cli::lepton(&["data"])?;
    // The board build (USART, probe-rs runner) must keep compiling though no board is here.
    firmware::build_variant("board", false, &["board"], None)?;
    // No panic on the inference path: the call-graph walk and the link-time proof.
    no_panic()?;
    status(cargo().args(["test", "--release", "--workspace", "--no-fail-fast"]).args(args))?;
    Ok(())
}
