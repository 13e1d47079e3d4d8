//! `cargo xtask demo`: the main job, end to end on the QEMU board — MNIST, train (or reuse the
//! committed model), quantize, judge on the host, build the firmware, run all test images on
//! the device, and print accuracy, host/device agreement and the cost table.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cli::lepton;
use crate::{firmware, preflight, qemu, root, DEFAULT_MODEL};

pub fn demo(reuse_model: bool, epochs: usize, images: Option<usize>) -> Result<()> {
    preflight::check(&preflight::ALL)?;
    let work = root().join("target/demo");
    std::fs::create_dir_all(&work)?;
    lepton(&["data"])?;

    let (float_dir, int8): (PathBuf, PathBuf) = if reuse_model {
        eprintln!("\nxtask: reusing the committed model in models/mnist-cnn (drop --reuse-model to train from scratch)");
        (root().join("models/mnist-cnn"), root().join(DEFAULT_MODEL))
    } else {
        let float_dir = work.join("mnist-cnn");
        let _ = std::fs::remove_dir_all(&float_dir);
        let epochs = epochs.to_string();
        lepton(&["train", "--epochs", &epochs, "--out", path(&float_dir)?])?;
        let int8 = work.join("int8.lpk");
        lepton(&["quantize", "--float", path(&float_dir)?, "--out", path(&int8)?])?;
        (float_dir, int8)
    };
    lepton(&["eval", "--model", path(&int8)?, "--float", path(&float_dir)?])?;
    lepton(&["report", "--model", path(&int8)?])?;

    eprintln!("\n$ cargo xtask qemu --model {}", int8.display());
    let elf = firmware::build(&[])?;
    let report = qemu::run(&int8, None, images, &elf, true, true, lepton_core::device::Link::Semihosting)?;
    println!();
    qemu::print(&report, false)
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}
