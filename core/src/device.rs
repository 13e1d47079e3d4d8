//! Run the Lepton firmware on QEMU's `netduinoplus2` (an STM32F405): the model goes into the
//! flash model partition with QEMU's loader, inputs stream in over semihosting, results (class,
//! int8 outputs, instruction counts) stream back in the frames of `lepton_nn::protocol`. With
//! `-icount shift=0`, the firmware's TIM2 counts executed instructions exactly.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lepton_nn::protocol::{self, Frame, StreamReader, Summary};
use object::{Object, ObjectSection, ObjectSymbol};

pub use lepton_nn::protocol::{describe_exit, MODEL_PARTITION_ADDRESS, MODEL_PARTITION_BYTES};

/// One input's result as the device reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceResult {
    pub class: u16,
    pub logits: Vec<i8>,
    /// The model's output (the logits when the model has no final softmax).
    pub outputs: Vec<i8>,
    pub instructions: u32,
    /// Instructions of each step of the plan, in plan order.
    pub per_step: Vec<u32>,
}

impl DeviceResult {
    /// A result frame's contents (`None` for another frame) in a stream of `steps`-step plans.
    pub fn from_frame(frame: &Frame, steps: usize) -> Option<DeviceResult> {
        let Frame::Result { class, logits, outputs, instructions, per_step } = *frame else { return None };
        Some(DeviceResult {
            class,
            logits: logits.to_vec(),
            outputs: if outputs.is_empty() { logits.to_vec() } else { outputs.to_vec() },
            instructions,
            per_step: (0..steps).map(|i| protocol::step_counter(per_step, i)).collect(),
        })
    }
}

/// Inputs whose device logits or outputs differ from the host's in any bit; a result missing on
/// either side counts as a difference.
pub fn mismatches(host: &crate::eval::Outputs, device: &[DeviceResult]) -> usize {
    let differ = host.logits.iter().zip(&host.outputs).zip(device).filter(|((l, o), d)| **l != d.logits || **o != d.outputs).count();
    differ + host.logits.len().abs_diff(device.len())
}

#[derive(Clone, Debug, Default)]
pub struct DeviceRun {
    pub results: Vec<DeviceResult>,
    pub stack_peak_bytes: u32,
    pub arena_bytes: u32,
    pub model_bytes: u32,
}

/// The firmware ended with an exit code other than OK (or QEMU was killed): the code, what it
/// means, and the firmware's decoded log. `anyhow` errors of [`run`] can be downcast to it.
#[derive(Clone, Debug)]
pub struct FirmwareExit {
    /// The firmware's exit status; `None` when QEMU was killed after its time limit.
    pub code: Option<i32>,
    pub log: String,
}

impl FirmwareExit {
    pub fn meaning(&self) -> &'static str {
        match self.code {
            Some(code) => describe_exit(code),
            None => "timed out (killed)",
        }
    }
}

impl std::fmt::Display for FirmwareExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "firmware exited with code {code}: {}\n{}", self.meaning(), self.log),
            None => write!(f, "QEMU timed out\n{}", self.log),
        }
    }
}

impl std::error::Error for FirmwareExit {}

/// `qemu-system-arm` (or `$LEPTON_QEMU`), or an error that says how to install it.
pub fn qemu_binary() -> Result<PathBuf> {
    let name = std::env::var_os("LEPTON_QEMU").unwrap_or_else(|| "qemu-system-arm".into());
    match Command::new(&name).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(PathBuf::from(name)),
        _ => bail!("{}", missing_qemu_message(&name.to_string_lossy())),
    }
}

/// What to do when QEMU is missing.
pub fn missing_qemu_message(name: &str) -> String {
    format!(
        "{name} not found: install QEMU's Arm system emulator (Debian/Ubuntu: `sudo apt-get install -y qemu-system-arm`; \
         macOS: `brew install qemu`), or set LEPTON_QEMU to its path"
    )
}

/// Bytes the firmware occupies in flash (every allocated section placed in flash, including
/// `.data`'s load image), from the ELF.
pub fn flash_code_bytes(elf: &[u8]) -> Result<u64> {
    let file = object::File::parse(elf).context("firmware is not an ELF file")?;
    let code = protocol::FLASH_ADDRESS as u64..MODEL_PARTITION_ADDRESS as u64;
    let mut total = 0;
    for section in file.sections() {
        let name = section.name().unwrap_or("");
        let loaded = matches!(section.kind(), object::SectionKind::Text | object::SectionKind::ReadOnlyData | object::SectionKind::ReadOnlyString);
        if (code.contains(&section.address()) && loaded) || name == ".data" {
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

/// Bytes of the functions reachable from the function whose symbol name contains `root`
/// (itself included): see [`call_graph`]. This is the code an inference can execute, as
/// linked: kernels inlined into the root count once, out-of-line ones once each.
pub fn reachable_code_bytes(elf: &[u8], root: &str) -> Result<u64> {
    Ok(call_graph(elf, &[root])?.iter().map(|f| f.size).sum())
}

/// A function of the firmware reached by [`call_graph`].
#[derive(Clone, Debug)]
pub struct Reached {
    pub name: String,
    pub size: u64,
}

/// The functions reachable from the functions whose names contain one of `roots` (those
/// included): a walk of the call graph through every Thumb-2 `BL`, `BLX` and `B.W` (tail call)
/// whose target is the start of another function.
pub fn call_graph(elf: &[u8], roots: &[&str]) -> Result<Vec<Reached>> {
    Ok(call_graph_and_sites(elf, roots)?.0)
}

/// A call instruction: at `site`, in function `caller`, to function `callee`.
#[derive(Clone, Debug)]
pub struct CallSite {
    pub caller: String,
    pub callee: String,
    pub site: u64,
}

/// The ELF's functions: (address without the Thumb bit, size, symbol name), by address.
pub fn functions(elf: &[u8]) -> Result<Vec<(u64, u64, String)>> {
    let file = object::File::parse(elf).context("firmware is not an ELF file")?;
    let mut functions: Vec<(u64, u64, String)> = file
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
        .map(|s| (s.address() & !1, s.size(), s.name().unwrap_or("?").to_string()))
        .collect();
    functions.sort_unstable_by_key(|f| f.0);
    functions.dedup_by_key(|f| f.0);
    Ok(functions)
}

fn call_graph_and_sites(elf: &[u8], roots: &[&str]) -> Result<(Vec<Reached>, Vec<CallSite>)> {
    let file = object::File::parse(elf).context("firmware is not an ELF file")?;
    let functions = functions(elf)?;
    let mut todo = Vec::new();
    for root in roots {
        let start = file
            .symbols()
            .find(|s| s.kind() == object::SymbolKind::Text && s.name().is_ok_and(|n| n.contains(root)))
            .with_context(|| format!("no function named like {root} in the firmware"))?
            .address()
            & !1;
        todo.push(start);
    }
    let text = |addr: u64, len: u64| -> Option<&[u8]> {
        let section = file.sections().find(|s| s.address() <= addr && addr + len <= s.address() + s.size())?;
        let at = (addr - section.address()) as usize;
        section.data().ok()?.get(at..at + len as usize)
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut edges = Vec::new();
    while let Some(addr) = todo.pop() {
        let Ok(i) = functions.binary_search_by_key(&addr, |f| f.0) else { continue };
        if !seen.insert(addr) {
            continue;
        }
        let size = functions[i].1;
        let Some(code) = text(addr, size) else { continue };
        let halfword = |k: usize| u16::from_le_bytes([code[k], code[k + 1]]);
        let mut k = 0;
        while k + 2 <= code.len() {
            let hw1 = halfword(k);
            if hw1 >> 11 < 0x1D || k + 4 > code.len() {
                k += 2;
                continue;
            }
            let hw2 = halfword(k + 2);
            // BL (T1), BLX (T2) and B.W (T4): 11110 S imm10 | 1 1/0 J1 x J2 imm11.
            let is_call = hw1 >> 11 == 0x1E && (hw2 & 0xD000 == 0xD000 || hw2 & 0xD000 == 0xC000 || hw2 & 0xD000 == 0x9000);
            if is_call {
                let s = ((hw1 >> 10) & 1) as i64;
                let (j1, j2) = (((hw2 >> 13) & 1) as i64, ((hw2 >> 11) & 1) as i64);
                let (i1, i2) = (1 - (j1 ^ s), 1 - (j2 ^ s));
                let imm = (s << 24) | (i1 << 23) | (i2 << 22) | (((hw1 & 0x3FF) as i64) << 12) | (((hw2 & 0x7FF) as i64) << 1);
                let offset = (imm << 39) >> 39; // sign-extend 25 bits
                let target = ((addr + k as u64 + 4) as i64 + offset) as u64 & !1;
                todo.push(target);
                edges.push((i, addr + k as u64, target));
            }
            k += 4;
        }
    }
    let name = |i: usize| functions[i].2.clone();
    let reached = functions.iter().filter(|f| seen.contains(&f.0)).map(|f| Reached { name: f.2.clone(), size: f.1 }).collect();
    let sites = edges
        .into_iter()
        .filter_map(|(i, site, target)| {
            let j = functions.binary_search_by_key(&target, |f| f.0).ok()?;
            Some(CallSite { caller: name(i), callee: name(j), site })
        })
        .collect();
    Ok((reached, sites))
}

/// The length of the Thumb-2 instruction whose first halfword is `hw1` (2 or 4 bytes).
fn thumb_len(hw1: u16) -> usize {
    if hw1 >> 11 >= 0x1D {
        4
    } else {
        2
    }
}

/// Whether the Thumb-2 instruction whose first halfword is `hw1` reads the PC rounded down
/// to a word: ADR (T1 `1010 0`, T2 `F2AF`, T3 `F20F`, `i` at bit 10), a literal load (LDR T1
/// `0100 1`; LDR, LDRB, LDRH and their signed forms T2 `1111 100S U SZ 1 1111`; LDRD
/// `1110 100P U1W1 1111` with P or W set: with both clear it is TBB/TBH or an exclusive load,
/// which read the PC unaligned) or VLDR literal (`1110 1101 UD01 1111`).
pub fn reads_aligned_pc(hw1: u16) -> bool {
    let adr = hw1 >> 11 == 0x14 || hw1 & 0xFBFF == 0xF2AF || hw1 & 0xFBFF == 0xF20F;
    let load = hw1 >> 11 == 0x09 || (hw1 & 0xFE1F == 0xF81F && hw1 & 0x60 != 0x60) || (hw1 & 0xFE5F == 0xE85F && hw1 & 0x0120 != 0) || hw1 & 0xFF3F == 0xED1F;
    adr || load
}

/// A function that reads the PC rounded down to a word (ADR or LDR literal, see
/// [`reads_aligned_pc`]): its name, start address (without the Thumb bit) and the address of
/// its first such instruction.
#[derive(Clone, Debug)]
pub struct PcRelative {
    pub name: String,
    pub address: u64,
    pub site: u64,
}

impl PcRelative {
    /// The assembler resolves a label in the same section against the section's start as if
    /// it were word-aligned: in a function placed 2 bytes off a word, an ADR of a label in the
    /// function (a computed entry into an unrolled loop) lands 2 bytes off its target. LLVM
    /// aligns the functions with constant pools, and `.p2align 2` before an `adr` in asm
    /// raises its function's alignment; a function for which this is false is a latent bug.
    pub fn is_word_aligned(&self) -> bool {
        self.address % 4 == 0
    }
}

/// Every function of the firmware that reads the PC rounded down to a word (decoded from its
/// start, instruction by instruction).
pub fn pc_relative_functions(elf: &[u8]) -> Result<Vec<PcRelative>> {
    let file = object::File::parse(elf).context("firmware is not an ELF file")?;
    let mut found = Vec::new();
    for (address, size, name) in functions(elf)? {
        let Some(section) = file.sections().find(|s| s.address() <= address && address + size <= s.address() + s.size()) else { continue };
        let Ok(data) = section.data() else { continue };
        let at = (address - section.address()) as usize;
        let Some(code) = data.get(at..at + size as usize) else { continue };
        let halfword = |k: usize| code.get(k..k + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
        let mut k = 0;
        while k + 2 <= code.len() {
            let hw1 = halfword(k);
            if reads_aligned_pc(hw1) {
                found.push(PcRelative { name, address, site: address + k as u64 });
                break;
            }
            k += thumb_len(hw1);
        }
    }
    Ok(found)
}

/// Every call from the firmware's own code into a panic entry point (`core::panicking`, failed
/// slice indexing, the panic handler) that the functions named by `roots` can reach: each as
/// "caller -> panic at address", the address of the call for `addr2line`.
pub fn reachable_panics(elf: &[u8], roots: &[&str]) -> Result<Vec<CallSite>> {
    let (_, sites) = call_graph_and_sites(elf, roots)?;
    let is_panic = |n: &str| n.contains("panicking") || n.contains("rust_begin_unwind") || n.contains("slice5index") || n.contains("panic_bounds_check");
    let mut out: Vec<CallSite> = sites
        .into_iter()
        .filter(|c| is_panic(&c.callee) && !is_panic(&c.caller))
        .map(|c| CallSite { caller: demangle(&c.caller), callee: demangle(&c.callee), site: c.site })
        .collect();
    out.sort_by_key(|c| c.site);
    out.dedup_by_key(|c| c.site);
    Ok(out)
}

/// A Rust (legacy-mangled) symbol without its hash, readable enough for a report.
fn demangle(name: &str) -> String {
    if name.starts_with("_R") {
        // v0 mangling (the standard library's): its last identifiers are enough here.
        let mut idents = Vec::new();
        let b = name.as_bytes();
        let mut i = 2;
        while i < b.len() {
            if b[i].is_ascii_digit() {
                let j = (i..b.len()).find(|&j| !b[j].is_ascii_digit()).unwrap_or(b.len());
                let len: usize = name[i..j].parse().unwrap_or(0);
                let start = if b.get(j) == Some(&b'_') { j + 1 } else { j };
                if let Some(id) = name.get(start..start + len) {
                    idents.push(id.to_string());
                }
                i = start + len;
            } else {
                i += 1;
            }
        }
        let keep = idents.len().saturating_sub(2);
        return idents[keep..].join("::");
    }
    let Some(rest) = name.strip_prefix("_ZN") else { return name.to_string() };
    let mut parts = Vec::new();
    let mut s = rest;
    while let Some(end) = s.find(|c: char| !c.is_ascii_digit()) {
        let Ok(len) = s[..end].parse::<usize>() else { break };
        let Some(part) = s.get(end..end + len) else { break };
        if !(part.len() == 17 && part.starts_with('h')) {
            parts.push(part.replace("$LT$", "<").replace("$GT$", ">").replace("$u20$", " ").replace("..", "::"));
        }
        s = &s[end + len..];
    }
    parts.join("::")
}

/// Run `elf` on QEMU with `model` in the model partition over `inputs` (the model's int8
/// input tensors, each `input_len` bytes), split across `jobs` parallel QEMU instances, showing inputs done. Results come back
/// in input order. `model = None` for a firmware that embeds its model.
pub fn run(elf: &Path, model: Option<&[u8]>, inputs: &[u8], input_len: usize, jobs: usize) -> Result<DeviceRun> {
    run_over(Link::Semihosting, elf, model, inputs, input_len, jobs)
}

/// How inputs reach the firmware under QEMU and results come back (`--link` of `cargo xtask
/// qemu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Link {
    /// Host files over semihosting (the `qemu` firmware).
    Semihosting,
    /// USART1 on a TCP socket (the `board` firmware, feature `board-on-qemu`), driven by the
    /// host's UART session (`lepton_core::uart`).
    Uart,
}

impl Link {
    /// The name `--link` takes and reports write.
    pub fn name(self) -> &'static str {
        match self {
            Link::Semihosting => "semihosting",
            Link::Uart => "uart",
        }
    }
}

/// [`run`] over either link.
pub fn run_over(link: Link, elf: &Path, model: Option<&[u8]>, inputs: &[u8], input_len: usize, jobs: usize) -> Result<DeviceRun> {
    ensure!(input_len > 0 && inputs.len().is_multiple_of(input_len), "inputs are not a whole number of {input_len}-byte inputs");
    let qemu = qemu_binary()?;
    let work = tempfile::tempdir()?;
    let model_path = match model {
        Some(model) => {
            ensure!(
                model.len() <= MODEL_PARTITION_BYTES as usize,
                "the model is {} bytes; the model partition holds {MODEL_PARTITION_BYTES}",
                model.len()
            );
            let path = work.path().join("model.lpk");
            std::fs::write(&path, model)?;
            Some(path)
        }
        None => None,
    };
    let count = inputs.len() / input_len;
    let jobs = jobs.clamp(1, count.max(1));
    let per_job = count.div_ceil(jobs);
    let dirs: Vec<PathBuf> = (0..jobs).map(|j| work.path().join(format!("job{j}"))).collect();
    let progress = crate::progress::Progress::new(count as u64, "device inputs");
    let done: Vec<AtomicUsize> = (0..jobs).map(|_| AtomicUsize::new(0)).collect();

    let runs: Vec<Result<DeviceRun>> = std::thread::scope(|s| {
        let handles: Vec<_> = dirs
            .iter()
            .enumerate()
            .map(|(j, dir)| {
                let chunk = &inputs[(j * per_job * input_len).min(inputs.len())..((j + 1) * per_job * input_len).min(inputs.len())];
                let (qemu, model_path, done) = (&qemu, model_path.as_deref(), &done[j]);
                s.spawn(move || match link {
                    Link::Semihosting => run_one(qemu, elf, model_path, chunk, input_len, dir, &[]),
                    Link::Uart => run_one_uart(qemu, elf, model_path, chunk, input_len, done),
                })
            })
            .collect();
        while handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(200));
            let over_files: usize = dirs.iter().map(|d| results_so_far(&d.join("results.bin"))).sum();
            let over_uart: usize = done.iter().map(|d| d.load(Ordering::Relaxed)).sum();
            progress.set((over_files + over_uart) as u64);
        }
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("QEMU thread panicked"))).collect()
    });
    progress.finish();
    let mut total = DeviceRun::default();
    for run in runs {
        let run = run?;
        total.results.extend(run.results);
        total.stack_peak_bytes = total.stack_peak_bytes.max(run.stack_peak_bytes);
        total.arena_bytes = run.arena_bytes;
        total.model_bytes = run.model_bytes;
    }
    ensure!(total.results.len() == count, "device returned {} results for {count} inputs", total.results.len());
    Ok(total)
}

/// Complete result frames in a results file that a device is still writing.
fn results_so_far(path: &Path) -> usize {
    let Ok(mut file) = std::fs::File::open(path) else { return 0 };
    let mut hello = [0u8; protocol::HELLO_BYTES];
    if std::io::Read::read_exact(&mut file, &mut hello).is_err() {
        return 0;
    }
    let len = file.metadata().map_or(0, |m| m.len() as usize);
    StreamReader::new(&hello).map_or(0, |r| StreamReader::complete_results(len, &r.hello))
}

/// [`run`] in one QEMU instance with `extra` arguments (e.g. a TCG plugin).
pub fn run_with(elf: &Path, model: &[u8], inputs: &[u8], input_len: usize, extra: &[String]) -> Result<DeviceRun> {
    ensure!(input_len > 0 && !inputs.is_empty() && inputs.len().is_multiple_of(input_len), "inputs are not a whole number of {input_len}-byte inputs");
    let work = tempfile::tempdir()?;
    let model_path = work.path().join("model.lpk");
    std::fs::write(&model_path, model)?;
    run_one(&qemu_binary()?, elf, Some(&model_path), inputs, input_len, work.path(), extra)
}

fn run_one(qemu: &Path, elf: &Path, model: Option<&Path>, inputs: &[u8], input_len: usize, dir: &Path, extra: &[String]) -> Result<DeviceRun> {
    std::fs::create_dir_all(dir)?;
    let inputs_path = dir.join("inputs.bin");
    let results_path = dir.join("results.bin");
    std::fs::write(&inputs_path, inputs)?;
    // Generous: ~20 s per 1,000 MNIST images at the reference kernels' speed.
    let timeout = Duration::from_secs(120 + (inputs.len() / input_len) as u64 / 25);
    let out = qemu_command(qemu, elf, model, &inputs_path, &results_path, timeout).args(extra).output().with_context(|| format!("starting {}", qemu.display()))?;
    let code = out.status.code().unwrap_or(-1);
    if code != 0 {
        let log = decode_log(elf, &out.stdout).unwrap_or_else(|e| format!("(log not decodable: {e})"));
        let log = format!("{log}{}", String::from_utf8_lossy(&out.stderr));
        let code = (code != 137 && code != -1).then_some(code);
        return Err(FirmwareExit { code, log }.into());
    }
    parse_results(&std::fs::read(&results_path).context("firmware wrote no results file")?)
}

/// The board firmware under QEMU with USART1 on a TCP connection to this process, driven by
/// [`crate::uart::run_session`]; `done` counts the results received.
fn run_one_uart(qemu: &Path, elf: &Path, model: Option<&Path>, inputs: &[u8], input_len: usize, done: &AtomicUsize) -> Result<DeviceRun> {
    let listener = TcpListener::bind("127.0.0.1:0").context("opening a local TCP port for QEMU's USART1")?;
    let serial = format!("tcp:{}", listener.local_addr()?);
    let mut qemu = Command::new(qemu)
        .args(qemu_args_on(elf, model, &serial))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", qemu.display()))?;
    let session = accept_qemu(&listener, &mut qemu).and_then(|mut stream| {
        stream.set_nodelay(true)?;
        crate::uart::run_session(&mut stream, inputs, input_len, || {
            done.fetch_add(1, Ordering::Relaxed);
        })
    });
    // The board firmware halts (it has no exit status): stop QEMU either way.
    let _ = qemu.kill();
    let output = qemu.wait_with_output()?;
    session.map_err(|e| match e.downcast::<FirmwareExit>() {
        Ok(mut exit) => {
            exit.log.push_str(&String::from_utf8_lossy(&output.stderr));
            exit.into()
        }
        Err(e) => e.context(format!("QEMU: {}", String::from_utf8_lossy(&output.stderr).trim())),
    })
}

/// QEMU's connection to `listener`, or why it did not come.
fn accept_qemu(listener: &TcpListener, qemu: &mut Child) -> Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = qemu.try_wait()? {
                    bail!("QEMU exited ({status}) before it connected its USART");
                }
                if Instant::now() > deadline {
                    bail!("QEMU did not connect its USART within 30 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// QEMU running `elf` on the default board (see [`qemu_args`]) over the inputs file, writing the
/// results file, killed after `timeout` (exit status 137).
pub fn qemu_command(qemu: &Path, elf: &Path, model: Option<&Path>, inputs: &Path, results: &Path, timeout: Duration) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg("--signal=KILL").arg(timeout.as_secs().to_string()).arg(qemu);
    cmd.args(qemu_args(elf, model));
    cmd.arg("-append").arg(format!("{} {}", inputs.display(), results.display()));
    cmd
}

/// QEMU's arguments for the default board, the model in the partition, `-icount shift=0`.
pub fn qemu_args(elf: &Path, model: Option<&Path>) -> Vec<String> {
    qemu_args_on(elf, model, "none")
}

/// [`qemu_args`] with USART1 on the QEMU character device `serial` (e.g. `tcp:127.0.0.1:4444`).
pub fn qemu_args_on(elf: &Path, model: Option<&Path>, serial: &str) -> Vec<String> {
    let mut args: Vec<String> = ["-M", "netduinoplus2", "-nographic", "-monitor", "none", "-serial", serial].map(String::from).to_vec();
    args.extend(["-semihosting-config", "enable=on,target=native", "-icount", "shift=0"].map(String::from));
    if let Some(model) = model {
        args.push("-device".into());
        args.push(format!("loader,file={},addr={MODEL_PARTITION_ADDRESS:#x}", model.display()));
    }
    args.push("-kernel".into());
    args.push(elf.display().to_string());
    args
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

/// Parse a results stream (frames in `lepton_nn::protocol`).
pub fn parse_results(bytes: &[u8]) -> Result<DeviceRun> {
    let mut reader = StreamReader::new(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let steps = reader.hello.steps as usize;
    let mut run = DeviceRun::default();
    loop {
        match reader.next_frame().map_err(|e| anyhow::anyhow!("{e}"))? {
            Some(frame @ Frame::Result { .. }) => run.results.extend(DeviceResult::from_frame(&frame, steps)),
            Some(Frame::Summary(Summary { stack_peak_bytes, arena_bytes, model_bytes })) => {
                (run.stack_peak_bytes, run.arena_bytes, run.model_bytes) = (stack_peak_bytes, arena_bytes, model_bytes);
                return Ok(run);
            }
            None => bail!("results stream ends without a summary"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encodings that read the word-aligned PC, as the GNU and LLVM assemblers write them,
    /// and neighbours that do not.
    #[test]
    fn pc_relative_reads_are_decoded() {
        // adr r2, label (T1); adr.w r2, label (T3, add); adr.w r2, label (T2, sub); the same with i set.
        for hw1 in [0xA202, 0xF20F, 0xF2AF, 0xF60F, 0xF6AF] {
            assert!(reads_aligned_pc(hw1), "{hw1:#06x}");
        }
        // ldr r3, [pc, #4] (T1); ldr.w r3, [pc, #-4] / [pc, #4] (T2); ldrb, ldrsh; ldrd r0, r1,
        // [pc, #8]; vldr s0, [pc, #8].
        for hw1 in [0x4B01, 0xF85F, 0xF8DF, 0xF89F, 0xF93F, 0xE9DF, 0xED9F] {
            assert!(reads_aligned_pc(hw1), "{hw1:#06x}");
        }
        // push {r4, lr}; add r2, sp, #8 (T1 `1010 1`); ldr r3, [r1] (T1 `0110 1`); ldr.w r3, [r1, #4]
        // (`F8D1`); addw r2, r3, #1 (`F203`); b.w / bl (`F000`).
        // ldrd r0, r1, [r2, #8] (`E9D2`); vldr s0, [r3] (`ED93`); tbb [pc, r0] (`E8DF`), which
        // reads the PC unaligned.
        for hw1 in [0xB510, 0xAA02, 0x680B, 0xF8D1, 0xF203, 0xF000, 0xE9D2, 0xED93, 0xE8DF] {
            assert!(!reads_aligned_pc(hw1), "{hw1:#06x}");
        }
        assert_eq!((thumb_len(0xA202), thumb_len(0xF20F), thumb_len(0xE7FE)), (2, 4, 2));
    }
}
