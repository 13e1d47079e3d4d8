//! The one error type of `lepton-nn`: every malformed model or misuse is one of these.

use core::fmt;

/// Where in a model a problem was found.
pub type LayerIndex = u16;

// A word-sized tag: the payload is then word-aligned and whole words, which the compiler moves
// with loads and stores where a copy of the 11 bytes after a byte tag was a `memcpy` call (and
// linked `memcpy` into the inference code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Error {
    /// The blob ends before a structure it declares (`needed` bytes, `available` present).
    Truncated { needed: usize, available: usize },
    /// The first four bytes are not `LPTN`.
    BadMagic,
    /// A format version this build does not read.
    UnsupportedVersion { found: u16, supported: u16 },
    /// The header length field disagrees with this version's header.
    BadHeaderLength(u16),
    /// The payload CRC-32 does not match the stored one.
    CrcMismatch { stored: u32, computed: u32 },
    /// The model declares no layers, or more than [`crate::format::MAX_LAYERS`].
    LayerCount(u16),
    /// A layer's op code is not one this build knows.
    UnknownOp { layer: LayerIndex, op: u8 },
    /// A layer parameter is invalid (zero stride, bad padding code, unrepresentable shift, ...).
    BadParameter { layer: LayerIndex, what: &'static str },
    /// A layer's input shape or zero point is not what the previous layer produces, or its output
    /// shape is not what its own parameters produce.
    ShapeMismatch { layer: LayerIndex, what: &'static str },
    /// A data section (weights, bias, ...) lies outside the payload or has the wrong length.
    SectionOutOfRange { layer: LayerIndex, section: &'static str },
    /// Worst-case accumulator of a layer does not fit in int32: the model cannot be run exactly.
    AccumulatorOverflow { layer: LayerIndex },
    /// A size computation overflowed the address space.
    SizeOverflow,
    /// The arena given to the engine is smaller than the plan needs.
    ArenaTooSmall { needed: usize, available: usize },
    /// A buffer handed to a kernel or the engine has the wrong length.
    BufferSize { expected: usize, found: usize },
    /// A reserved field is not zero.
    Reserved { what: &'static str },
    /// The model declares no tensors, or more than [`crate::format::MAX_TENSORS`].
    TensorCount(u16),
    /// `payload_len` is smaller than the tables the header declares.
    PayloadTooShort { needed: usize, declared: usize },
    /// An op (or the header, `op: None`) names a tensor that does not exist.
    BadTensorRef { op: Option<LayerIndex>, tensor: u16 },
    /// An op reads a tensor no earlier op wrote (the op list is not in topological order).
    NotTopological { op: LayerIndex, tensor: u16 },
    /// Two ops write one tensor, or an op writes the model input.
    TensorWrittenTwice { op: LayerIndex, tensor: u16 },
    /// A tensor that is neither the model input nor written by any op.
    TensorNeverWritten { tensor: u16 },
    /// A tensor record is invalid (empty shape, scale not positive and finite, zero point).
    BadTensor { tensor: u16, what: &'static str },
    /// A tensor larger than any supported device could hold.
    TensorTooLarge { tensor: u16, bytes: usize, max: usize },
    /// A data section does not start on a 4-byte boundary.
    SectionMisaligned { layer: LayerIndex, section: &'static str },
    /// A data section starts before the end of the tables or of the previous section.
    SectionOverlap { layer: LayerIndex, section: &'static str },
    /// The storage given for the engine's plan holds fewer steps than the model may need.
    PlanTooSmall { needed: usize, available: usize },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated { needed, available } => {
                write!(f, "model truncated: needs {needed} bytes, only {available} present")
            }
            Error::BadMagic => write!(f, "not a Lepton model (bad magic; expected \"LPTN\")"),
            Error::UnsupportedVersion { found, supported } => write!(
                f,
                "model format version {found} is not supported (this build reads version {supported}): \
                 re-run `lepton quantize` or `lepton import` to regenerate the model"
            ),
            Error::BadHeaderLength(len) => write!(f, "bad header length {len}"),
            Error::CrcMismatch { stored, computed } => {
                write!(f, "model corrupt: CRC-32 {computed:#010x} does not match stored {stored:#010x}")
            }
            Error::LayerCount(n) => write!(f, "invalid op count {n}"),
            Error::UnknownOp { layer, op } => write!(f, "op {layer}: unknown op code {op}"),
            Error::BadParameter { layer, what } => write!(f, "op {layer}: invalid parameter: {what}"),
            Error::ShapeMismatch { layer, what } => write!(f, "op {layer}: shapes do not fit: {what}"),
            Error::SectionOutOfRange { layer, section } => {
                write!(f, "op {layer}: {section} section out of range or of the wrong length")
            }
            Error::AccumulatorOverflow { layer } => {
                write!(f, "op {layer}: worst-case accumulator does not fit in int32")
            }
            Error::SizeOverflow => write!(f, "tensor size overflows the address space"),
            Error::ArenaTooSmall { needed, available } => {
                write!(f, "arena too small: the model needs {needed} bytes, {available} given")
            }
            Error::BufferSize { expected, found } => {
                write!(f, "buffer has {found} elements, {expected} expected")
            }
            Error::Reserved { what } => write!(f, "model corrupt: reserved {what} not zero"),
            Error::TensorCount(n) => write!(f, "invalid tensor count {n}"),
            Error::PayloadTooShort { needed, declared } => {
                write!(f, "model header declares a payload of {declared} bytes, but its tables alone need {needed}")
            }
            Error::BadTensorRef { op: Some(op), tensor } => write!(f, "op {op}: tensor {tensor} does not exist"),
            Error::BadTensorRef { op: None, tensor } => write!(f, "model input or output tensor {tensor} does not exist"),
            Error::NotTopological { op, tensor } => {
                write!(f, "op {op} reads tensor {tensor} before any op writes it (ops not in topological order)")
            }
            Error::TensorWrittenTwice { op, tensor } => write!(f, "op {op} writes tensor {tensor}, which already holds a value"),
            Error::TensorNeverWritten { tensor } => write!(f, "tensor {tensor} is neither the model input nor written by any op"),
            Error::BadTensor { tensor, what } => write!(f, "tensor {tensor}: {what}"),
            Error::TensorTooLarge { tensor, bytes, max } => {
                write!(f, "tensor {tensor} has {bytes} bytes; no supported device holds more than {max}")
            }
            Error::SectionMisaligned { layer, section } => write!(f, "op {layer}: {section} section not 4-byte aligned"),
            Error::SectionOverlap { layer, section } => {
                write!(f, "op {layer}: {section} section overlaps the tables or an earlier section")
            }
            Error::PlanTooSmall { needed, available } => {
                write!(f, "plan storage too small: the model needs up to {needed} steps, {available} given")
            }
        }
    }
}

impl core::error::Error for Error {}
