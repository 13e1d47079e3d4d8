//! `lepton run --port`: the board firmware (USART1 transport, feature `board-on-qemu`) under
//! QEMU with its USART on a TCP socket, driven by the CLI as a user drives a real board. The
//! device's outputs must equal TFLM's for a TFLM-made op model (depthwise, depth multiplier 2).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;

/// The board-on-qemu firmware, built by `cargo xtask qemu --link uart` (a no-op when built).
fn board_firmware() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo).current_dir(root()).args(["xtask", "qemu", "--link", "uart", "--images", "1", "--json"]).output().expect("cargo xtask runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    target.join("firmware-board-on-qemu/thumbv7em-none-eabihf/release/lepton-firmware")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Import the TFLM op model `name`, start the board firmware under QEMU with USART1 on a TCP
/// server (`wait`: QEMU holds the guest until the host connects; else the board boots first and
/// the host connects `delay` later), run the op's inputs with `lepton run --port`, and return
/// the CLI's stderr after checking the device's outputs against TFLM's.
fn run_op_on_board(name: &str, wait: bool, delay: std::time::Duration) -> String {
    let elf = board_firmware();
    let dir = tempfile::tempdir().unwrap();
    let ops = root().join("tests/data/ops");
    let model = dir.path().join(format!("{name}.lpk"));
    ok(lepton(&["import", s(&ops.join(format!("{name}.tflite"))), "--out", s(&model)]));
    let port = free_port();
    let serial = format!("tcp:127.0.0.1:{port},server=on,wait={}", if wait { "on" } else { "off" });
    let qemu = lepton::device::qemu_binary().unwrap();
    let mut board = Command::new(qemu).args(lepton::device::qemu_args_on(&elf, Some(&model), &serial)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(delay);
    let out = dir.path().join("device.npy");
    let inputs = ops.join(format!("{name}.inputs.npy"));
    let run = lepton(&["run", "--port", &format!("127.0.0.1:{port}"), "--model", s(&model), "--inputs", s(&inputs), "--out", s(&out)]);
    let _ = board.kill();
    let _ = board.wait();
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "{stderr}");
    let device = lepton::npy::read_i8(&out).unwrap();
    let tflm = lepton::npy::read_i8(&ops.join(format!("{name}.outputs.npy"))).unwrap();
    assert_eq!(device.values, tflm.values, "{name}: device outputs vs TFLM's");
    stderr
}

#[test]
fn lepton_run_over_a_port_gets_tflm_s_outputs_from_the_board_firmware() {
    let stderr = run_op_on_board("dw_mult2", true, std::time::Duration::ZERO);
    assert!(stderr.contains("16 inputs, 0 differ from the host"), "{stderr}");
}

#[test]
fn lepton_run_over_a_port_nobody_listens_on_says_so() {
    let port = free_port();
    let model = root().join("models/mnist-cnn/int8.lpk");
    let inputs = root().join("tests/data/ops/dw_mult2.inputs.npy");
    let e = err(lepton(&["run", "--port", &format!("127.0.0.1:{port}"), "--model", s(&model), "--inputs", s(&inputs), "--out", "/tmp/lepton-never-written.npy"]));
    // The inputs do not fit the model: said before any link is opened.
    assert!(e.contains("dw_mult2.inputs.npy"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let ops = root().join("tests/data/ops");
    let dw = dir.path().join("dw.lpk");
    ok(lepton(&["import", s(&ops.join("dw_mult2.tflite")), "--out", s(&dw)]));
    let e = err(lepton(&["run", "--port", &format!("127.0.0.1:{port}"), "--model", s(&dw), "--inputs", s(&inputs), "--out", s(&dir.path().join("y.npy"))]));
    assert!(e.contains(&format!("connecting to 127.0.0.1:{port}")), "{e}");
    assert!(!dir.path().join("y.npy").exists());
}

/// A board that booted before the host opened the port has sent its hello into the void: the
/// host asks again (`UART_HELLO`) after a second of silence. QEMU runs the guest at once here
/// (`wait=off`), the host connects two seconds later.
#[test]
fn lepton_run_asks_a_board_that_started_first_for_its_hello() {
    run_op_on_board("conv_same_s2", false, std::time::Duration::from_secs(2));
}
