//! The host side of the UART link (`lepton_nn::protocol`): wait for the device's hello, then
//! for each input send `UART_INPUT` + the input and read its result frame before the next (a
//! UART has no flow control), then `UART_END`, the summary and the exit frame. The stream is
//! any [`Port`]: a serial port on a board, a TCP socket to QEMU's USART.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lepton_nn::protocol::{self, Exit, Hello, Summary, EXIT_MAGIC, UART_END, UART_HELLO, UART_INPUT};

use crate::device::{DeviceResult, DeviceRun, FirmwareExit};

/// Bytes both ways, with a bound on how long a read waits.
pub trait Port: Read + Write {
    fn set_read_timeout(&mut self, timeout: Duration) -> std::io::Result<()>;
}

impl Port for TcpStream {
    fn set_read_timeout(&mut self, timeout: Duration) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, Some(timeout))
    }
}

/// How long the host waits for any one frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(60);

/// Silence after which the host asks for the hello again: a board that is already running sent
/// its hello before the port was open. A board answers in microseconds once it waits for input.
pub const HELLO_PROBE: Duration = Duration::from_secs(1);

/// Why a session ended early, from the device's exit frame.
fn exit_error(code: u8) -> anyhow::Error {
    let log = "  (the firmware's log is on RTT: `probe-rs attach` shows it on a board)\n".to_string();
    FirmwareExit { code: Some(code as i32), log }.into()
}

/// Exactly `buf.len()` bytes, or an error that says what was awaited.
fn read_exact<R: Read + ?Sized>(stream: &mut R, buf: &mut [u8], what: &str) -> Result<()> {
    match stream.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            bail!("no {what} from the device in time: is the Lepton board firmware running (reset the board), with a model flashed (`lepton flash`)?")
        }
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => bail!("the link closed while waiting for the {what}"),
        Err(e) => Err(e).with_context(|| format!("reading the {what}")),
    }
}

/// Fill `frame` (at least 4 bytes), whose first `have` bytes are already read; when the device
/// sends its exit frame instead, its code as an error.
fn read_frame<R: Read + ?Sized>(stream: &mut R, frame: &mut [u8], have: usize, what: &str) -> Result<()> {
    read_exact(stream, &mut frame[have..4], what)?;
    if frame[..4] == EXIT_MAGIC {
        let mut code = [0u8; 1];
        read_exact(stream, &mut code, "exit code")?;
        return Err(exit_error(code[0]));
    }
    read_exact(stream, &mut frame[4..], what)
}

/// The device's hello frame; after [`HELLO_PROBE`] of silence the host asks for it
/// ([`UART_HELLO`]).
pub fn read_hello<P: Port + ?Sized>(stream: &mut P) -> Result<Hello> {
    let mut first = [0u8; 1];
    stream.set_read_timeout(HELLO_PROBE)?;
    let probed = stream.read(&mut first);
    stream.set_read_timeout(FRAME_TIMEOUT)?;
    match probed {
        Ok(1) => {}
        Ok(_) => bail!("the link closed while waiting for the hello frame"),
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            stream.write_all(&[UART_HELLO]).and_then(|()| stream.flush()).context("asking the device for its hello frame")?;
            read_exact(stream, &mut first, "hello frame")?;
        }
        Err(e) => return Err(e).context("reading the hello frame"),
    }
    let mut b = [0u8; protocol::HELLO_BYTES];
    b[0] = first[0];
    read_frame(stream, &mut b, 1, "hello frame")?;
    Hello::decode(&b).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Run `inputs` (back to back, `input_len` bytes each) through the device at the other end of
/// `stream`, calling `on_result` after each result.
pub fn run_session<S: Port + ?Sized>(stream: &mut S, inputs: &[u8], input_len: usize, mut on_result: impl FnMut()) -> Result<DeviceRun> {
    let hello = read_hello(stream)?;
    if hello.input_bytes as usize != input_len {
        bail!(
            "the device's model takes {}-byte inputs, these inputs are {input_len} bytes: flash the model you mean to run (`lepton flash --model M.lpk`)",
            hello.input_bytes
        );
    }
    let mut run = DeviceRun::default();
    let mut frame = vec![0u8; protocol::result_bytes(&hello)];
    for input in inputs.chunks_exact(input_len) {
        stream.write_all(&[UART_INPUT]).and_then(|()| stream.write_all(input)).and_then(|()| stream.flush()).context("sending an input")?;
        read_frame(stream, &mut frame, 0, "result frame")?;
        run.results.push(device_result(&hello, &frame)?);
        on_result();
    }
    stream.write_all(&[UART_END]).and_then(|()| stream.flush()).context("ending the session")?;
    let mut summary = [0u8; protocol::SUMMARY_BYTES];
    read_frame(stream, &mut summary, 0, "summary frame")?;
    let summary = Summary::decode(&summary).context("the device sent no DONE summary after the last input")?;
    (run.stack_peak_bytes, run.arena_bytes, run.model_bytes) = (summary.stack_peak_bytes, summary.arena_bytes, summary.model_bytes);
    let mut end = [0u8; 4];
    match read_frame(stream, &mut end, 0, "exit frame") {
        Err(e) if e.downcast_ref::<FirmwareExit>().is_some_and(|x| x.code == Some(Exit::Ok.code() as i32)) => Ok(run),
        Err(e) => Err(e),
        Ok(()) => bail!("the device sent {end:02x?} where its exit frame belongs"),
    }
}

/// One result frame as a [`DeviceResult`].
fn device_result(hello: &Hello, frame: &[u8]) -> Result<DeviceResult> {
    let frame = protocol::decode_result(hello, frame).map_err(|e| anyhow::anyhow!("{e}"))?;
    DeviceResult::from_frame(&frame, hello.steps as usize).context("a summary frame where a result frame belongs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lepton_nn::protocol::{ResultFrame, Sink, PROTOCOL_VERSION};

    /// A device that answers from a script: what it has sent, and what the host wrote.
    struct Scripted {
        from_device: std::io::Cursor<Vec<u8>>,
        to_device: Vec<u8>,
    }
    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.from_device.read(buf)
        }
    }
    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.to_device.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Port for Scripted {
        fn set_read_timeout(&mut self, _: Duration) -> std::io::Result<()> {
            Ok(())
        }
    }
    struct Bytes(Vec<u8>);
    impl Sink for Bytes {
        type Error = ();
        fn send(&mut self, b: &[u8]) -> Result<(), ()> {
            self.0.extend_from_slice(b);
            Ok(())
        }
    }

    const HELLO: Hello = Hello { version: PROTOCOL_VERSION, steps: 1, logits: 2, outputs: 0, input_bytes: 3 };

    fn device_stream(results: usize, exit: Exit) -> Vec<u8> {
        let mut out = Bytes(Vec::new());
        protocol::send_hello(&mut out, &HELLO).unwrap();
        for i in 0..results {
            let frame = ResultFrame { class: 1, logits: &[i as i8, 5], outputs: &[], instructions: 7, per_step: &[7] };
            protocol::send_result(&mut out, &frame).unwrap();
        }
        protocol::send_summary(&mut out, &Summary { stack_peak_bytes: 1, arena_bytes: 2, model_bytes: 3 }).unwrap();
        out.0.extend_from_slice(&protocol::exit_frame(exit));
        out.0
    }

    #[test]
    fn a_session_sends_framed_inputs_and_reads_every_result() {
        let mut s = Scripted { from_device: std::io::Cursor::new(device_stream(2, Exit::Ok)), to_device: Vec::new() };
        let mut seen = 0;
        let run = run_session(&mut s, &[1, 2, 3, 4, 5, 6], 3, || seen += 1).unwrap();
        assert_eq!(seen, 2);
        assert_eq!(run.results.iter().map(|r| r.logits.clone()).collect::<Vec<_>>(), [vec![0, 5], vec![1, 5]]);
        assert_eq!((run.stack_peak_bytes, run.arena_bytes, run.model_bytes), (1, 2, 3));
        assert_eq!(s.to_device, [UART_INPUT, 1, 2, 3, UART_INPUT, 4, 5, 6, UART_END]);
    }

    #[test]
    fn the_exit_frame_ends_a_session_with_the_firmware_code() {
        // A bad model: the firmware sends nothing but its exit frame.
        let mut s = Scripted { from_device: std::io::Cursor::new(protocol::exit_frame(Exit::BadModel).to_vec()), to_device: Vec::new() };
        let e = run_session(&mut s, &[0; 3], 3, || {}).unwrap_err();
        assert_eq!(e.downcast_ref::<FirmwareExit>().and_then(|x| x.code), Some(3));
        // A device that fails after the hello, and one whose model wants other inputs.
        let mut stream = device_stream(0, Exit::Ok);
        stream.truncate(protocol::HELLO_BYTES);
        stream.extend_from_slice(&protocol::exit_frame(Exit::Inference));
        let mut s = Scripted { from_device: std::io::Cursor::new(stream), to_device: Vec::new() };
        let e = run_session(&mut s, &[0; 3], 3, || {}).unwrap_err();
        assert_eq!(e.downcast_ref::<FirmwareExit>().and_then(|x| x.code), Some(6));
        let mut s = Scripted { from_device: std::io::Cursor::new(device_stream(1, Exit::Ok)), to_device: Vec::new() };
        let e = run_session(&mut s, &[0; 4], 4, || {}).unwrap_err();
        assert!(e.to_string().contains("3-byte inputs"), "{e}");
        assert!(s.to_device.is_empty(), "nothing is sent to a device that runs another model");
    }

    #[test]
    fn a_stream_cut_anywhere_is_an_error_not_a_hang_or_panic() {
        let full = device_stream(1, Exit::Ok);
        for len in 0..full.len() {
            let mut s = Scripted { from_device: std::io::Cursor::new(full[..len].to_vec()), to_device: Vec::new() };
            assert!(run_session(&mut s, &[0; 3], 3, || {}).is_err(), "cut at {len}");
        }
    }
}
