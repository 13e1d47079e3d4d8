//! Corruption sweep on the device: 1,000 damaged copies of the committed model, each loaded into
//! the model partition of QEMU's STM32F405 and run by the firmware, QEMU started directly and in
//! parallel (the host never parses these models). Every bit flip and every truncation must stop
//! the firmware with BAD_MODEL (3); no run of any kind may hang, panic (101), fault (102) or lock
//! up. Payload edits with the CRC recomputed are models the CRC cannot catch: any clean exit is
//! allowed for them (the parser rejects most; some are valid models that run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lepton_core::device::{qemu_binary, qemu_command};
use lepton_nn::format::crc32;
use lepton_nn::protocol::Exit;

const BIT_FLIPS: usize = 500;
const TRUNCATIONS: usize = 200;
const PAYLOAD_EDITS: usize = 300;
/// A run still going after this long has hung (a bad model is refused in milliseconds, one
/// inference of the seed CNN takes well under a second of QEMU time).
const HANG: Duration = Duration::from_secs(30);

/// xorshift64*: the same corruptions on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    BitFlip,
    Truncation,
    PayloadEdit,
}

fn corruptions(model: &[u8]) -> Vec<(Kind, String, Vec<u8>)> {
    let mut rng = Rng(0x1e97_0a5e_ed5e_ed01);
    let payload_len = u32::from_le_bytes(model[8..12].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    for i in 0..BIT_FLIPS {
        // A sixth of the flips in the header, where one field decides how the rest is read.
        let byte = if i % 6 == 0 { rng.below(32) } else { rng.below(model.len()) };
        let bit = rng.below(8);
        let mut m = model.to_vec();
        m[byte] ^= 1 << bit;
        out.push((Kind::BitFlip, format!("bit {bit} of byte {byte}"), m));
    }
    for i in 0..TRUNCATIONS {
        let len = if i % 5 == 0 { 1 + rng.below(64) } else { 1 + rng.below(model.len() - 1) };
        out.push((Kind::Truncation, format!("first {len} bytes"), model[..len].to_vec()));
    }
    // Two thirds of the edits in the header fields and the tensor and op tables, which the
    // parser must check one by one; the rest anywhere (mostly weights: valid models).
    let tables = 16 + 16 * u16::from_le_bytes([model[16], model[17]]) as usize + 96 * u16::from_le_bytes([model[18], model[19]]) as usize;
    for i in 0..PAYLOAD_EDITS {
        let at = if i % 3 == 2 { 16 + rng.below(payload_len + 16) } else { 16 + rng.below(tables) };
        let value = rng.below(256) as u8;
        let mut m = model.to_vec();
        m[at] = value;
        let crc = crc32(&m[16..32 + payload_len]);
        m[12..16].copy_from_slice(&crc.to_le_bytes());
        out.push((Kind::PayloadEdit, format!("byte {at} = {value:#04x}, CRC recomputed"), m));
    }
    out
}

/// The firmware's exit code on `model` (None: killed after [`HANG`]).
fn run_firmware(qemu: &Path, elf: &Path, model: &Path, input: &Path, results: &Path) -> Option<i32> {
    let out = qemu_command(qemu, elf, Some(model), input, results, HANG).output().expect("QEMU starts");
    out.status.code().filter(|&c| c != 137)
}

fn firmware_elf(root: &Path) -> PathBuf {
    // `cargo xtask qemu` builds the firmware (nothing to do when the other device tests did).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo).current_dir(root).args(["xtask", "qemu", "--images", "1", "--json"]).output().expect("cargo xtask runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    target.join("firmware/thumbv7em-none-eabihf/release/lepton-firmware")
}

#[test]
fn a_thousand_corrupted_models_never_hang_panic_or_fault_the_firmware() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let elf = firmware_elf(root);
    let qemu = qemu_binary().expect("QEMU");
    let model = std::fs::read(root.join("models/mnist-cnn/int8.lpk")).unwrap();
    let cases = corruptions(&model);
    let work = std::env::temp_dir().join(format!("lepton-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let input = work.join("input.bin");
    std::fs::write(&input, vec![0u8; 28 * 28]).unwrap();

    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut exits: Vec<(usize, Option<i32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (next, cases, qemu, elf, input, work) = (&next, &cases, &qemu, &elf, &input, &work);
                s.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((_, _, bytes)) = cases.get(i) else { break done };
                        let path = work.join(format!("model{t}.lpk"));
                        std::fs::write(&path, bytes).unwrap();
                        done.push((i, run_firmware(qemu, elf, &path, input, &work.join(format!("results{t}.bin")))));
                    }
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let _ = std::fs::remove_dir_all(&work);
    exits.sort_by_key(|e| e.0);

    let mut failures = Vec::new();
    let mut tally = std::collections::BTreeMap::<(String, String), usize>::new();
    for (i, code) in exits {
        let (kind, what, _) = &cases[i];
        let name = code.map_or("HANG".to_string(), |c| Exit::from_code(c).map_or(format!("exit {c}"), |e| e.name().to_string()));
        *tally.entry((format!("{kind:?}"), name.clone())).or_default() += 1;
        let clean = matches!(code.and_then(Exit::from_code), Some(e) if !matches!(e, Exit::Panic | Exit::HardFault));
        let ok = match kind {
            Kind::BitFlip | Kind::Truncation => code == Some(Exit::BadModel.code() as i32),
            Kind::PayloadEdit => clean,
        };
        if !ok {
            failures.push(format!("{kind:?} {what}: {name}"));
        }
    }
    eprintln!("corruption sweep ({} models):", cases.len());
    for ((kind, exit), n) in &tally {
        eprintln!("  {kind:12} {exit:16} {n}");
    }
    assert_eq!(cases.len(), 1000);
    assert!(failures.is_empty(), "{} of {} runs failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
