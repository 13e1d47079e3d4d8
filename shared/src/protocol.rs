//! The device link, defined once for the firmware and the host: where the model lives in flash,
//! the frames that carry images in and results out (the same bytes over semihosting files and
//! over a UART), and the exit codes with their meanings.
//!
//! Results stream (device to host):
//!
//! | frame | bytes (integers little-endian) |
//! |---|---|
//! | hello | `"LPRS"`, protocol version (u8), steps per inference (u16), logits per inference (u16), outputs per inference (u16; 0 when the output is the logits), input bytes per inference (u32) |
//! | result, per input | class (u16), logits count (u16), the int8 logits, the int8 outputs, instructions (u32), one u32 per step |
//! | summary | `"DONE"`, stack peak bytes (u32), arena bytes (u32), model bytes (u32) |
//! | exit (UART only) | `"EXIT"`, exit code (u8): the firmware's last bytes, in place of any frame |
//!
//! Inputs (host to device): the model's int8 input tensors; over semihosting a file of whole
//! inputs back to back, over a UART each input preceded by [`UART_INPUT`], and [`UART_END`] ends
//! the session; [`UART_HELLO`] asks for the hello again. Over a UART the host sends an input
//! only after the previous result arrived (a
//! UART has no flow control; the device reads while it is not computing), and only after the
//! hello (QEMU's USART drops what arrives before the firmware enables it). The logits are the
//! input of a final softmax (else the output). Under semihosting the exit code is QEMU's exit
//! status; a board has no exit status, so it sends the exit frame and halts. A result frame
//! never starts with `"EXIT"`: its class (u16) would be 0x5845, above any logits count the
//! firmware accepts ([`MAX_LOGITS`]).
//!
//! A step is what the engine's plan runs at once: one op, or several fused (e.g. a conv and the
//! max-pool after it). Its instructions are charged to its first op ([`charged_layer`]).

/// Flash address of the model partition (STM32F405 sectors 6-11): code lives in sectors 0-5.
pub const MODEL_PARTITION_ADDRESS: u32 = 0x0804_0000;
/// Bytes of the model partition (768 KiB, up to the end of the 1 MiB flash).
pub const MODEL_PARTITION_BYTES: u32 = 768 * 1024;
/// Start of flash, where the firmware's code is linked.
pub const FLASH_ADDRESS: u32 = 0x0800_0000;
/// Bytes of flash for the firmware's code and constants (sectors 0-5).
pub const CODE_BYTES: u32 = MODEL_PARTITION_ADDRESS - FLASH_ADDRESS;
/// SRAM of the STM32F405 (SRAM1 + SRAM2; the 64 KiB CCM is apart).
pub const RAM_ADDRESS: u32 = 0x2000_0000;
pub const RAM_BYTES: u32 = 128 * 1024;

/// Version of the frames below; the hello frame carries it.
pub const PROTOCOL_VERSION: u8 = 3;
pub const HELLO_MAGIC: [u8; 4] = *b"LPRS";
pub const SUMMARY_MAGIC: [u8; 4] = *b"DONE";
pub const EXIT_MAGIC: [u8; 4] = *b"EXIT";
/// Bytes of the hello frame.
pub const HELLO_BYTES: usize = 15;
/// Bytes of the exit frame.
pub const EXIT_BYTES: usize = 5;
/// The most logits (and outputs) a result frame may carry: the counts are u16, and a class
/// below this bound keeps a result frame distinct from an exit frame.
pub const MAX_LOGITS: usize = 0x5845;
/// Bytes of the summary frame.
pub const SUMMARY_BYTES: usize = 16;
/// UART, host to device: an input follows.
pub const UART_INPUT: u8 = 0x01;
/// UART, host to device: no more inputs.
pub const UART_END: u8 = 0x00;
/// UART, host to device: send the hello frame again (the host opened the port after the board
/// started; the board ignores any other byte between inputs).
pub const UART_HELLO: u8 = 0x02;

/// The layer a step's instructions are charged to: its first (a fused conv + pool shows under
/// the conv). The firmware, `cargo xtask bench` and `lepton report` all use this rule.
pub const fn charged_layer(first: usize, _last: usize) -> usize {
    first
}

/// Bytes of one result frame for a stream announced by `hello`.
pub const fn result_bytes(hello: &Hello) -> usize {
    2 + 2 + hello.logits as usize + hello.outputs as usize + 4 + 4 * hello.steps as usize
}

/// How the firmware ends: its exit status under QEMU (semihosting), logged on a board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// Bad command line (`-append` arguments).
    Usage = 2,
    /// No valid model in the model partition: missing, corrupt, another format version.
    BadModel = 3,
    /// The model needs more arena, steps or input/output room than the firmware has.
    ArenaTooSmall = 4,
    /// The link failed (semihosting file I/O, UART).
    Io = 5,
    /// The engine reported an error while running a valid model.
    Inference = 6,
    /// A Rust panic (the firmware is built to have none on its inference path).
    Panic = 101,
    /// A hard fault.
    HardFault = 102,
}

impl Exit {
    pub const ALL: [Exit; 8] =
        [Exit::Ok, Exit::Usage, Exit::BadModel, Exit::ArenaTooSmall, Exit::Io, Exit::Inference, Exit::Panic, Exit::HardFault];

    pub const fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: i32) -> Option<Exit> {
        Exit::ALL.iter().copied().find(|e| e.code() as i32 == code)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Exit::Ok => "OK",
            Exit::Usage => "USAGE",
            Exit::BadModel => "BAD_MODEL",
            Exit::ArenaTooSmall => "ARENA_TOO_SMALL",
            Exit::Io => "IO",
            Exit::Inference => "INFERENCE",
            Exit::Panic => "PANIC",
            Exit::HardFault => "HARD_FAULT",
        }
    }

    pub const fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Usage => "usage error (arguments)",
            Exit::BadModel => "no valid model in the model partition (missing, corrupt, or another format version)",
            Exit::ArenaTooSmall => "the model needs more arena, steps or input/output room than the firmware has",
            Exit::Io => "I/O error on the link (semihosting or UART)",
            Exit::Inference => "inference error",
            Exit::Panic => "panic",
            Exit::HardFault => "hard fault",
        }
    }
}

/// QEMU's own exit status when the core locks up (e.g. a stack overflow caught by flip-link).
pub const QEMU_LOCKUP: i32 = 134;

/// What an exit status of a firmware run under QEMU means.
pub fn describe_exit(code: i32) -> &'static str {
    match Exit::from_code(code) {
        Some(e) => e.meaning(),
        None if code == QEMU_LOCKUP => "lockup (e.g. a stack overflow caught by flip-link)",
        None => "unexpected exit",
    }
}

/// Where frames go: a semihosting file, a UART, a buffer.
pub trait Sink {
    type Error;
    fn send(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
}

/// Hello frame contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u8,
    pub steps: u16,
    pub logits: u16,
    /// 0 when the output is the logits (no final softmax).
    pub outputs: u16,
    /// Bytes of one input (the model's int8 input tensor).
    pub input_bytes: u32,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut b = [0u8; HELLO_BYTES];
        b[0..4].copy_from_slice(&HELLO_MAGIC);
        b[4] = self.version;
        b[5..7].copy_from_slice(&self.steps.to_le_bytes());
        b[7..9].copy_from_slice(&self.logits.to_le_bytes());
        b[9..11].copy_from_slice(&self.outputs.to_le_bytes());
        b[11..15].copy_from_slice(&self.input_bytes.to_le_bytes());
        b
    }

    /// The hello frame in `b` (its first [`HELLO_BYTES`]).
    pub fn decode(b: &[u8]) -> Result<Hello, StreamError> {
        let b = b.get(..HELLO_BYTES).ok_or(StreamError::NoHello)?;
        if b[0..4] != HELLO_MAGIC {
            return Err(StreamError::NoHello);
        }
        if b[4] != PROTOCOL_VERSION {
            return Err(StreamError::Version(b[4]));
        }
        Ok(Hello {
            version: b[4],
            steps: u16::from_le_bytes([b[5], b[6]]),
            logits: u16::from_le_bytes([b[7], b[8]]),
            outputs: u16::from_le_bytes([b[9], b[10]]),
            input_bytes: u32::from_le_bytes([b[11], b[12], b[13], b[14]]),
        })
    }
}

/// One input's result.
#[derive(Clone, Copy, Debug)]
pub struct ResultFrame<'a> {
    pub class: u16,
    pub logits: &'a [i8],
    /// The model's output when it is not the logits (else empty).
    pub outputs: &'a [i8],
    pub instructions: u32,
    /// Per-step counters, little-endian u32 each (as read from a stream or written by the device).
    pub per_step: &'a [u32],
}

/// Summary frame contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Summary {
    pub stack_peak_bytes: u32,
    pub arena_bytes: u32,
    pub model_bytes: u32,
}

impl Summary {
    pub fn encode(&self) -> [u8; SUMMARY_BYTES] {
        let mut b = [0u8; SUMMARY_BYTES];
        b[0..4].copy_from_slice(&SUMMARY_MAGIC);
        b[4..8].copy_from_slice(&self.stack_peak_bytes.to_le_bytes());
        b[8..12].copy_from_slice(&self.arena_bytes.to_le_bytes());
        b[12..16].copy_from_slice(&self.model_bytes.to_le_bytes());
        b
    }

    /// The summary frame in `b` (its first [`SUMMARY_BYTES`]), `None` without the magic.
    pub fn decode(b: &[u8]) -> Option<Summary> {
        let b = b.get(..SUMMARY_BYTES)?;
        if b[0..4] != SUMMARY_MAGIC {
            return None;
        }
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(Summary { stack_peak_bytes: word(4), arena_bytes: word(8), model_bytes: word(12) })
    }
}

/// The exit frame for `code`.
pub fn exit_frame(code: Exit) -> [u8; EXIT_BYTES] {
    let m = EXIT_MAGIC;
    [m[0], m[1], m[2], m[3], code.code()]
}

pub fn send_hello<S: Sink>(sink: &mut S, hello: &Hello) -> Result<(), S::Error> {
    sink.send(&hello.encode())
}

pub fn send_result<S: Sink>(sink: &mut S, r: &ResultFrame) -> Result<(), S::Error> {
    sink.send(&r.class.to_le_bytes())?;
    sink.send(&(r.logits.len() as u16).to_le_bytes())?;
    sink.send(crate::types::as_u8(r.logits))?;
    sink.send(crate::types::as_u8(r.outputs))?;
    sink.send(&r.instructions.to_le_bytes())?;
    for n in r.per_step {
        sink.send(&n.to_le_bytes())?;
    }
    Ok(())
}

pub fn send_summary<S: Sink>(sink: &mut S, s: &Summary) -> Result<(), S::Error> {
    sink.send(&s.encode())
}

/// Why a results stream could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// The stream does not start with a hello frame.
    NoHello,
    /// The hello frame names another protocol version.
    Version(u8),
    /// The stream ends inside a frame, or without a summary.
    Truncated,
    /// A result frame carries another number of logits than the hello frame announced.
    OutputCount { announced: u16, found: u16 },
}

impl core::fmt::Display for StreamError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            StreamError::NoHello => write!(f, "results stream has no LPRS hello frame"),
            StreamError::Version(v) => write!(f, "results stream has protocol version {v}; this build reads {PROTOCOL_VERSION}"),
            StreamError::Truncated => write!(f, "results stream truncated (no DONE summary)"),
            StreamError::OutputCount { announced, found } => {
                write!(f, "result frame has {found} logits; the hello frame announced {announced}")
            }
        }
    }
}

/// One frame read from a results stream.
#[derive(Clone, Copy, Debug)]
pub enum Frame<'a> {
    Result { class: u16, logits: &'a [i8], outputs: &'a [i8], instructions: u32, per_step: &'a [u8] },
    Summary(Summary),
}

/// Reads a results stream frame by frame, without allocating.
pub struct StreamReader<'a> {
    bytes: &'a [u8],
    at: usize,
    pub hello: Hello,
}

impl<'a> StreamReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Self, StreamError> {
        let hello = Hello::decode(bytes)?;
        Ok(StreamReader { bytes, at: HELLO_BYTES, hello })
    }

    /// Results complete so far (for progress while a device is still writing).
    pub fn complete_results(bytes_so_far: usize, hello: &Hello) -> usize {
        bytes_so_far.saturating_sub(HELLO_BYTES) / result_bytes(hello)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StreamError> {
        let end = self.at.checked_add(n).ok_or(StreamError::Truncated)?;
        let s = self.bytes.get(self.at..end).ok_or(StreamError::Truncated)?;
        self.at = end;
        Ok(s)
    }

    /// The next frame; after the summary, `None`.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'a>>, StreamError> {
        if self.at >= self.bytes.len() {
            return Err(StreamError::Truncated);
        }
        if self.bytes.get(self.at..self.at + 4) == Some(&SUMMARY_MAGIC[..]) {
            let summary = Summary::decode(self.take(SUMMARY_BYTES)?).ok_or(StreamError::Truncated)?;
            return Ok(Some(Frame::Summary(summary)));
        }
        let frame = self.take(result_bytes(&self.hello))?;
        decode_result(&self.hello, frame).map(Some)
    }
}

/// The result frame in `b` (exactly [`result_bytes`] long) of a stream announced by `hello`.
pub fn decode_result<'a>(hello: &Hello, b: &'a [u8]) -> Result<Frame<'a>, StreamError> {
    if b.len() != result_bytes(hello) {
        return Err(StreamError::Truncated);
    }
    let count = u16::from_le_bytes([b[2], b[3]]);
    if count != hello.logits {
        return Err(StreamError::OutputCount { announced: hello.logits, found: count });
    }
    let (logits, rest) = b[4..].split_at(count as usize);
    let (outputs, rest) = rest.split_at(hello.outputs as usize);
    let (instructions, per_step) = rest.split_at(4);
    Ok(Frame::Result {
        class: u16::from_le_bytes([b[0], b[1]]),
        logits: crate::types::as_i8(logits),
        outputs: crate::types::as_i8(outputs),
        instructions: u32::from_le_bytes([instructions[0], instructions[1], instructions[2], instructions[3]]),
        per_step,
    })
}

/// The `i`-th little-endian u32 of a per-step counter block.
pub fn step_counter(per_step: &[u8], i: usize) -> u32 {
    match per_step.get(4 * i..4 * i + 4) {
        Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Buf([u8; 256], usize);
    impl Sink for Buf {
        type Error = ();
        fn send(&mut self, bytes: &[u8]) -> Result<(), ()> {
            let end = self.1 + bytes.len();
            self.0.get_mut(self.1..end).ok_or(())?.copy_from_slice(bytes);
            self.1 = end;
            Ok(())
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut b = Buf([0; 256], 0);
        let hello = Hello { version: PROTOCOL_VERSION, steps: 2, logits: 3, outputs: 3, input_bytes: 784 };
        send_hello(&mut b, &hello).unwrap();
        send_result(&mut b, &ResultFrame { class: 300, logits: &[-1, 0, 7], outputs: &[-128, -128, 127], instructions: 99, per_step: &[5, 6] }).unwrap();
        assert_eq!(b.1, HELLO_BYTES + result_bytes(&hello));
        let summary = Summary { stack_peak_bytes: 1, arena_bytes: 2, model_bytes: 3 };
        send_summary(&mut b, &summary).unwrap();
        let mut r = StreamReader::new(&b.0[..b.1]).unwrap();
        assert_eq!(r.hello, hello);
        match r.next_frame().unwrap() {
            Some(Frame::Result { class, logits, outputs, instructions, per_step }) => {
                assert_eq!((class, logits, outputs, instructions), (300, &[-1i8, 0, 7][..], &[-128i8, -128, 127][..], 99));
                assert_eq!((step_counter(per_step, 0), step_counter(per_step, 1)), (5, 6));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.next_frame().unwrap(), Some(Frame::Summary(s)) if s == summary));
        // Any cut inside the stream is reported as truncated, never a panic.
        for len in HELLO_BYTES..b.1 {
            let mut r = StreamReader::new(&b.0[..len]).unwrap();
            let mut saw_error = false;
            for _ in 0..4 {
                match r.next_frame() {
                    Err(StreamError::Truncated) => {
                        saw_error = true;
                        break;
                    }
                    Ok(Some(Frame::Summary(_))) => break,
                    other => assert!(other.is_ok(), "{other:?}"),
                }
            }
            assert!(saw_error, "cut at {len}");
        }
    }

    #[test]
    fn frames_decode_what_they_encode() {
        let hello = Hello { version: PROTOCOL_VERSION, steps: 9, logits: 10, outputs: 0, input_bytes: 27_648 };
        assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
        let mut old = hello.encode();
        old[4] = 2;
        assert_eq!(Hello::decode(&old), Err(StreamError::Version(2)));
        assert_eq!(Hello::decode(&hello.encode()[..HELLO_BYTES - 1]), Err(StreamError::NoHello));
        let summary = Summary { stack_peak_bytes: 4448, arena_bytes: 9315, model_bytes: 190_032 };
        assert_eq!(Summary::decode(&summary.encode()), Some(summary));
        assert_eq!(Summary::decode(&exit_frame(Exit::Ok)), None);
        assert_eq!(exit_frame(Exit::BadModel), *b"EXIT\x03");
        // A result's class is below MAX_LOGITS, so its first bytes never read "EXIT".
        assert!(u16::from_le_bytes([EXIT_MAGIC[0], EXIT_MAGIC[1]]) as usize >= MAX_LOGITS);
    }

    #[test]
    fn every_exit_code_has_one_meaning() {
        for e in Exit::ALL {
            assert_eq!(Exit::from_code(e.code() as i32), Some(e));
            assert_eq!(describe_exit(e.code() as i32), e.meaning());
        }
        assert_eq!(describe_exit(QEMU_LOCKUP), "lockup (e.g. a stack overflow caught by flip-link)");
        assert_eq!(describe_exit(77), "unexpected exit");
    }

    #[test]
    fn the_partition_follows_the_code() {
        assert_eq!(CODE_BYTES, 256 * 1024);
        assert_eq!(MODEL_PARTITION_ADDRESS + MODEL_PARTITION_BYTES, 0x0810_0000);
    }
}
