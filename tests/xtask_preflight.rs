//! `cargo xtask` checks its prerequisites before any long build and names them all at once.

use std::path::Path;
use std::process::Command;

#[test]
fn a_missing_qemu_stops_the_demo_before_any_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .env("LEPTON_QEMU", "/nonexistent/qemu-system-arm")
        .args(["xtask", "demo", "--reuse-model"])
        .output()
        .expect("cargo xtask runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("missing prerequisites")
            && stderr.contains("/nonexistent/qemu-system-arm not found"),
        "{stderr}"
    );
    assert!(
        stderr.contains("apt-get install -y qemu-system-arm"),
        "the message says how to install it: {stderr}"
    );
    assert!(
        !stderr.contains("building the lepton CLI") && !stderr.contains("firmware"),
        "stopped before building: {stderr}"
    );
}
