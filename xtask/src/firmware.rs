//! Building the firmware: its own workspace, target and linker (flip-link).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{root, status};

/// Where firmware builds go: beside the host's target directory, never inside `firmware/`'s
/// default when CI points CARGO_TARGET_DIR elsewhere.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target")).join("firmware")
}

/// Install flip-link (the firmware's linker) when it is missing.
fn ensure_flip_link() -> Result<()> {
    if Command::new("flip-link").arg("--help").output().is_ok() {
        return Ok(());
    }
    eprintln!("xtask: flip-link (the firmware's linker) is missing; installing it with `cargo install --locked flip-link`");
    status(Command::new("cargo").args(["install", "--locked", "flip-link"]))
        .context("could not install flip-link; run `cargo install --locked flip-link` yourself")
}

/// Build the firmware in release mode with `features` and return the ELF path.
pub fn build(features: &[&str]) -> Result<PathBuf> {
    build_variant("qemu", true, features, None)
}

/// Build a firmware variant into its own target directory: `default_features` off for a board,
/// `embedded` = the model to put in the image (feature `embedded-model`).
pub fn build_variant(name: &str, default_features: bool, features: &[&str], embedded: Option<&std::path::Path>) -> Result<PathBuf> {
    ensure_flip_link()?;
    let target_dir = if name == "qemu" { target_dir() } else { target_dir().with_file_name(format!("firmware-{name}")) };
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root().join("firmware")).env_remove("CARGO_TARGET_DIR");
    if let Some(model) = embedded {
        cmd.env("LEPTON_MODEL", model);
    }
    cmd.args(["build", "--release", "--target-dir"]).arg(&target_dir);
    if !default_features {
        cmd.arg("--no-default-features");
    }
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    status(&mut cmd)?;
    let elf = target_dir.join("thumbv7em-none-eabihf/release/lepton-firmware");
    if !elf.is_file() {
        bail!("firmware build produced no {}", elf.display());
    }
    Ok(elf)
}
