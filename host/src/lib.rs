//! # lepton (host)
//!
//! The host half of Lepton: data, import, quantization arithmetic, the `.lpk` writer and
//! evaluation. The integer engine itself is `lepton-nn`, shared with the firmware.

pub mod data;
pub mod eval;
pub mod flash;
pub mod float;
pub mod import_onnx;
pub mod import_tflite;
pub mod pipeline;
pub mod onnx;
pub mod progress;
pub mod qemu;
pub mod qmodel;
pub mod quantize;
pub mod report;
pub mod quant;

/// Write to a temporary file beside `path`, then rename: no half-written file is ever left behind.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    #[cfg(unix)]
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
