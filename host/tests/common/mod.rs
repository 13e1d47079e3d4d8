//! Helpers shared by the CLI-level tests: run `lepton` as a user would, from the repo root.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn lepton(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lepton")).args(args).current_dir(root()).output().expect("lepton runs")
}

/// The command's stdout, after asserting it succeeded.
pub fn ok(out: Output) -> String {
    assert!(out.status.success(), "lepton failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The command's stderr, after asserting it failed.
pub fn err(out: Output) -> String {
    assert!(!out.status.success(), "expected failure, got: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The command's stdout and stderr, after asserting it succeeded.
pub fn both(out: Output) -> (String, String) {
    assert!(out.status.success(), "lepton failed: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}
