//! The `lepton` CLI, built on demand and run as a user runs it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::Result;

use crate::{cargo, status, target_dir};

/// Names a `lepton` binary already built from this checkout; `cargo xtask test` sets it after
/// its workspace build, so its test binaries' `cargo xtask` runs do not build the CLI again with
/// `-p lepton`'s different feature set (a second compile of tract and burn: ~7 min cold).
pub const PREBUILT_ENV: &str = "LEPTON_CLI";

/// The release `lepton` binary path (where every target directory layout puts it).
pub fn release_binary() -> PathBuf {
    target_dir().join("release").join(format!("lepton{}", std::env::consts::EXE_SUFFIX))
}

/// The release `lepton` binary, built (once per xtask run) with cargo's own progress shown,
/// or the one [`PREBUILT_ENV`] names.
pub fn binary() -> Result<PathBuf> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = BUILT.get() {
        return Ok(path.clone());
    }
    if let Some(path) = std::env::var_os(PREBUILT_ENV).map(PathBuf::from) {
        anyhow::ensure!(path.is_file(), "{PREBUILT_ENV}={} is not a lepton binary (unset it to build one)", path.display());
        return Ok(BUILT.get_or_init(|| path).clone());
    }
    eprintln!("xtask: building the lepton CLI (release; the first build compiles burn, tract and probe-rs: ~13 min on 2 cores)");
    status(cargo().args(["build", "--release", "-p", "lepton", "--bin", "lepton"]))?;
    Ok(BUILT.get_or_init(release_binary).clone())
}

/// Run `lepton ARGS` from the workspace root, echoing the command.
pub fn lepton(args: &[&str]) -> Result<()> {
    let bin = binary()?;
    eprintln!("\n$ lepton {}", args.join(" "));
    status(Command::new(bin).current_dir(crate::root()).args(args))
}

/// Run `lepton ARGS` and return its standard output (its progress still goes to the terminal).
pub fn lepton_output(args: &[&str]) -> Result<String> {
    let bin = binary()?;
    eprintln!("\n$ lepton {}", args.join(" "));
    let out = Command::new(bin).current_dir(crate::root()).args(args).stderr(std::process::Stdio::inherit()).output()?;
    if !out.status.success() {
        anyhow::bail!("lepton {} failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8(out.stdout)?)
}
