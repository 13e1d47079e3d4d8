//! Building the firmware: its own workspace, target and linker (flip-link).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Result};

use crate::{root, status};

/// Where firmware builds go: beside the host's target directory, never inside `firmware/`'s
/// default when CI points CARGO_TARGET_DIR elsewhere.
pub fn target_dir() -> PathBuf {
    crate::target_dir().join("firmware")
}

/// Build the firmware in release mode with `features` and return the ELF path.
pub fn build(features: &[&str]) -> Result<PathBuf> {
    build_variant("qemu", true, features, None)
}

/// The board firmware (USART1 link) as it runs under QEMU (feature `board-on-qemu`).
pub fn build_board_on_qemu() -> Result<PathBuf> {
    build_variant("board-on-qemu", false, &["board", "board-on-qemu"], None)
}

/// Build a firmware variant into its own target directory: `default_features` off for a board,
/// `embedded` = the model to put in the image (feature `embedded-model`).
pub fn build_variant(name: &str, default_features: bool, features: &[&str], embedded: Option<&std::path::Path>) -> Result<PathBuf> {
    crate::preflight::check(&[crate::preflight::Need::Target, crate::preflight::Need::FlipLink])?;
    eprintln!("xtask: building the {name} firmware (thumbv7em-none-eabihf; ~1 min the first time)");
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
