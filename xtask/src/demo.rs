//! `cargo xtask demo`: the main job, end to end on the QEMU board — MNIST, train (or reuse the
//! committed model), quantize, judge on the host, build the firmware, run all test images on
//! the device, and print accuracy, host/device agreement and the cost table.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{firmware, qemu, root, status, DEFAULT_MODEL};

/// Run the `lepton` CLI as a user would, echoing the command.
fn lepton(args: &[&str]) -> Result<()> {
    eprintln!("\n$ lepton {}", args.join(" "));
    status(Command::new("cargo").current_dir(root()).args(["run", "--release", "--quiet", "-p", "lepton", "--"]).args(args))
}

fn check_prerequisites() -> Result<()> {
    lepton::qemu::qemu_binary()?;
    let targets = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match targets {
        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("thumbv7em-none-eabihf") => {}
        Ok(_) => {
            eprintln!("xtask: adding the Cortex-M4F target: rustup target add thumbv7em-none-eabihf");
            status(Command::new("rustup").args(["target", "add", "thumbv7em-none-eabihf"]))?;
        }
        Err(_) => bail!("rustup not found: install Rust with rustup (https://rustup.rs), then `rustup target add thumbv7em-none-eabihf`"),
    }
    Ok(())
}

pub fn demo(reuse_model: bool, epochs: usize, images: Option<usize>) -> Result<()> {
    check_prerequisites()?;
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
    let report = qemu::run(&int8, images, &elf, true, true)?;
    println!();
    qemu::print(&report, false)
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}
