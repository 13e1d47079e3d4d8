//! Run the Lepton firmware on QEMU's `netduinoplus2` (an STM32F405): the model goes into the
//! flash model partition with QEMU's loader, images stream in over semihosting, predictions
//! (class, int8 logits, instruction counts) stream back. With `-icount shift=0`, the firmware's
//! TIM2 counts executed instructions exactly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use object::{Object, ObjectSection, ObjectSymbol};

/// Model partition (flash sectors 10-11) and its size.
pub const MODEL_ADDRESS: u32 = 0x080C_0000;
pub const MODEL_PARTITION_BYTES: usize = 256 * 1024;
const FLASH_START: u64 = 0x0800_0000;

/// One image's result as the device reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceResult {
    pub class: u8,
    pub logits: Vec<i8>,
    pub instructions: u32,
    pub per_layer: Vec<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct DeviceRun {
    pub results: Vec<DeviceResult>,
    pub stack_peak_bytes: u32,
    pub arena_bytes: u32,
    pub model_bytes: u32,
}

/// Exit codes of the firmware (see `firmware/src/main.rs`).
pub fn describe_exit(code: i32) -> &'static str {
    match code {
        0 => "ok",
        2 => "usage error (arguments)",
        3 => "no valid model in the model partition (missing, corrupt, or another format version)",
        4 => "the model needs more arena or layers than the firmware has",
        5 => "semihosting I/O error",
        6 => "inference error",
        101 => "panic",
        102 => "hard fault",
        134 => "lockup (e.g. stack overflow caught by flip-link)",
        _ => "unexpected exit",
    }
}

/// `qemu-system-arm`, or an error that says how to install it.
pub fn qemu_binary() -> Result<PathBuf> {
    let name = std::env::var_os("LEPTON_QEMU").unwrap_or_else(|| "qemu-system-arm".into());
    match Command::new(&name).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(PathBuf::from(name)),
        _ => bail!(
            "{} not found: install QEMU's Arm system emulator (Debian/Ubuntu: `sudo apt-get install -y qemu-system-arm`; \
             macOS: `brew install qemu`), or set LEPTON_QEMU to its path",
            name.to_string_lossy()
        ),
    }
}

/// Bytes the firmware occupies in flash (every allocated section placed in flash, including
/// `.data`'s load image), from the ELF.
pub fn flash_code_bytes(elf: &[u8]) -> Result<u64> {
    let file = object::File::parse(elf).context("firmware is not an ELF file")?;
    let mut total = 0;
    for section in file.sections() {
        let in_flash = (FLASH_START..MODEL_ADDRESS as u64).contains(&section.address());
        let name = section.name().unwrap_or("");
        let loaded = matches!(section.kind(), object::SectionKind::Text | object::SectionKind::ReadOnlyData | object::SectionKind::ReadOnlyString);
        if (in_flash && loaded) || name == ".data" {
            total += section.size();
        }
    }
    Ok(total)
}

/// Size of the named function symbols in the ELF (e.g. the inference kernels).
pub fn symbol_bytes(elf: &[u8], filter: impl Fn(&str) -> bool) -> Result<u64> {
    let file = object::File::parse(elf).context("firmware is not an ELF file")?;
    Ok(file.symbols().filter(|s| s.kind() == object::SymbolKind::Text && s.name().is_ok_and(&filter)).map(|s| s.size()).sum())
}

/// Run `elf` on QEMU with `model` in the model partition over `images` (each `image_len` bytes),
/// split across `jobs` parallel QEMU instances. Results come back in image order.
pub fn run(elf: &Path, model: &[u8], images: &[u8], image_len: usize, jobs: usize) -> Result<DeviceRun> {
    run_with(elf, Some(model), images, image_len, jobs)
}

/// [`run`], with `model = None` for a firmware that embeds its model (nothing is loaded into the
/// partition).
pub fn run_with(elf: &Path, model: Option<&[u8]>, images: &[u8], image_len: usize, jobs: usize) -> Result<DeviceRun> {
    ensure!(image_len > 0 && images.len().is_multiple_of(image_len), "images are not a whole number of {image_len}-byte images");
    let qemu = qemu_binary()?;
    let work = tempfile::tempdir()?;
    let model_path = match model {
        Some(model) => {
            ensure!(model.len() <= MODEL_PARTITION_BYTES, "model is {} bytes; the partition holds {MODEL_PARTITION_BYTES}", model.len());
            let path = work.path().join("model.lpk");
            std::fs::write(&path, model)?;
            Some(path)
        }
        None => None,
    };
    let count = images.len() / image_len;
    let jobs = jobs.clamp(1, count.max(1));
    let per_job = count.div_ceil(jobs);

    let runs: Vec<Result<DeviceRun>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs)
            .map(|j| {
                let chunk = &images[(j * per_job * image_len).min(images.len())..((j + 1) * per_job * image_len).min(images.len())];
                let (qemu, work, model_path) = (&qemu, work.path(), model_path.as_deref());
                s.spawn(move || run_one(qemu, elf, model_path, chunk, image_len, &work.join(format!("job{j}"))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("QEMU thread panicked"))).collect()
    });
    let mut total = DeviceRun::default();
    for run in runs {
        let run = run?;
        total.results.extend(run.results);
        total.stack_peak_bytes = total.stack_peak_bytes.max(run.stack_peak_bytes);
        total.arena_bytes = run.arena_bytes;
        total.model_bytes = run.model_bytes;
    }
    ensure!(total.results.len() == count, "device returned {} results for {count} images", total.results.len());
    Ok(total)
}

fn run_one(qemu: &Path, elf: &Path, model: Option<&Path>, images: &[u8], image_len: usize, dir: &Path) -> Result<DeviceRun> {
    std::fs::create_dir_all(dir)?;
    let images_path = dir.join("images.bin");
    let results_path = dir.join("results.bin");
    std::fs::write(&images_path, images)?;
    // Generous: ~20 s per 1,000 images at the reference kernels' speed.
    let timeout = Duration::from_secs(120 + (images.len() / image_len) as u64 / 25);
    let mut cmd = Command::new("timeout");
    cmd.arg("--signal=KILL").arg(timeout.as_secs().to_string()).arg(qemu);
    cmd.args(["-M", "netduinoplus2", "-nographic", "-monitor", "none", "-serial", "none"]);
    cmd.args(["-semihosting-config", "enable=on,target=native", "-icount", "shift=0"]);
    if let Some(model) = model {
        cmd.arg("-device").arg(format!("loader,file={},addr={MODEL_ADDRESS:#x}", model.display()));
    }
    cmd.arg("-kernel").arg(elf);
    cmd.arg("-append").arg(format!("{} {}", images_path.display(), results_path.display()));
    let out = cmd.output().with_context(|| format!("starting {}", qemu.display()))?;
    let code = out.status.code().unwrap_or(-1);
    if code != 0 {
        let log = decode_log(elf, &out.stdout).unwrap_or_else(|e| format!("(log not decodable: {e})"));
        if code == 137 || code == -1 {
            bail!("QEMU timed out after {} s\n{log}", timeout.as_secs());
        }
        bail!("firmware exited with code {code}: {}\n{log}{}", describe_exit(code), String::from_utf8_lossy(&out.stderr));
    }
    parse_results(&std::fs::read(&results_path).context("firmware wrote no results file")?)
}

/// Decode the firmware's defmt log (semihosting stdout) with the ELF's defmt table.
pub fn decode_log(elf: &Path, bytes: &[u8]) -> Result<String> {
    let elf = std::fs::read(elf)?;
    let table = defmt_decoder::Table::parse(&elf)?.context("firmware has no defmt table")?;
    let mut decoder = table.new_stream_decoder();
    decoder.received(bytes);
    let mut lines = String::new();
    while let Ok(frame) = decoder.decode() {
        lines.push_str(&format!("  device: {}\n", frame.display(false)));
    }
    Ok(lines)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    let s = b.get(at..at + 4).context("results truncated")?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parse the results file (format in `firmware/src/link_qemu.rs`).
pub fn parse_results(b: &[u8]) -> Result<DeviceRun> {
    ensure!(b.len() >= 5 && &b[..4] == b"LPRS", "results file has no LPRS header");
    let layers = b[4] as usize;
    let mut at = 5;
    let mut run = DeviceRun::default();
    while b.get(at..at + 4) != Some(b"DONE") {
        let class = *b.get(at).context("results truncated")?;
        let n = *b.get(at + 1).context("results truncated")? as usize;
        let logits = b.get(at + 2..at + 2 + n).context("results truncated")?.iter().map(|&x| x as i8).collect();
        at += 2 + n;
        let instructions = u32_at(b, at)?;
        let per_layer = (0..layers).map(|k| u32_at(b, at + 4 + 4 * k)).collect::<Result<_>>()?;
        at += 4 + 4 * layers;
        run.results.push(DeviceResult { class, logits, instructions, per_layer });
    }
    run.stack_peak_bytes = u32_at(b, at + 4)?;
    run.arena_bytes = u32_at(b, at + 8)?;
    run.model_bytes = u32_at(b, at + 12)?;
    Ok(run)
}
