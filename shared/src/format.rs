//! The Lepton model format (`.lpk`), version 2: see `shared/FORMAT.md`.
//!
//! A model is a graph: a tensor table (shape, quantization) and an op list in topological order,
//! in which every op names its input and output tensors. Parsing is zero-copy and total:
//! [`Model::parse`] checks everything (lengths, the CRC over every byte that defines the model,
//! reserved fields, every op's parameters and shapes, that the graph is in topological order
//! with one producer per tensor, that data sections lie after the tables, aligned, in order and
//! without overlap) and returns a typed [`Error`] for any malformed input. Once parsed,
//! [`Model::op`] cannot fail.

use crate::kernels::{Add, Conv2d, DepthwiseConv2d, FullyConnected, Mean, Pad, Pool, Softmax};
use crate::types::{I32Le, Padding, Requant, Shape, WeightLayout};
use crate::Error;

pub const MAGIC: [u8; 4] = *b"LPTN";
pub const VERSION: u16 = 2;
pub const HEADER_LEN: usize = 32;
/// The CRC covers the header from this offset on, and the payload.
pub const CRC_START: usize = 16;
pub const TENSOR_RECORD_LEN: usize = 16;
pub const OP_RECORD_LEN: usize = 96;
pub const MAX_TENSORS: usize = 128;
pub const MAX_OPS: usize = 128;
/// The largest tensor a model may declare: more than any supported device holds.
pub const MAX_TENSOR_BYTES: usize = 1 << 20;
/// "No tensor" in an op's second input.
pub const NO_TENSOR: u16 = u16::MAX;
/// Sections are 4-byte aligned (word-reading kernels use them in place).
pub const SECTION_ALIGN: usize = 4;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// CRC-32 (IEEE 802.3, as zlib and PNG) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    CRC32.checksum(bytes)
}

/// The CRC a model stores at offset 12: of bytes 16 to the end of the payload.
pub fn model_crc(model: &[u8]) -> u32 {
    crc32(model.get(CRC_START..).unwrap_or(&[]))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Conv2d = 1,
    MaxPool2d = 2,
    AvgPool2d = 3,
    FullyConnected = 4,
    Reshape = 5,
    Softmax = 6,
    DepthwiseConv2d = 7,
    Add = 8,
    Mean = 9,
    Pad = 10,
}

impl Op {
    pub const ALL: [Op; 10] = [
        Op::Conv2d,
        Op::MaxPool2d,
        Op::AvgPool2d,
        Op::FullyConnected,
        Op::Reshape,
        Op::Softmax,
        Op::DepthwiseConv2d,
        Op::Add,
        Op::Mean,
        Op::Pad,
    ];

    pub fn from_code(code: u8) -> Option<Op> {
        Op::ALL.iter().copied().find(|op| *op as u8 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Conv2d => "conv2d",
            Op::MaxPool2d => "max_pool2d",
            Op::AvgPool2d => "avg_pool2d",
            Op::FullyConnected => "fully_connected",
            Op::Reshape => "reshape",
            Op::Softmax => "softmax",
            Op::DepthwiseConv2d => "depthwise_conv2d",
            Op::Add => "add",
            Op::Mean => "mean",
            Op::Pad => "pad",
        }
    }
}

/// The fixed 32-byte header. All integers little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub payload_len: u32,
    pub crc: u32,
    pub tensor_count: u16,
    pub op_count: u16,
    /// The model's input and output tensors.
    pub input: u16,
    pub output: u16,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.payload_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.crc.to_le_bytes());
        b[16..18].copy_from_slice(&self.tensor_count.to_le_bytes());
        b[18..20].copy_from_slice(&self.op_count.to_le_bytes());
        b[20..22].copy_from_slice(&self.input.to_le_bytes());
        b[22..24].copy_from_slice(&self.output.to_le_bytes());
        b
    }

    /// Decode the header alone and check magic, version and header length.
    pub fn decode(bytes: &[u8]) -> Result<Header, Error> {
        let b = bytes.get(..HEADER_LEN).ok_or(Error::Truncated { needed: HEADER_LEN, available: bytes.len() })?;
        if b[0..4] != MAGIC {
            return Err(Error::BadMagic);
        }
        let version = u16_at(b, 4);
        if version != VERSION {
            return Err(Error::UnsupportedVersion { found: version, supported: VERSION });
        }
        let header_len = u16_at(b, 6);
        if header_len as usize != HEADER_LEN {
            return Err(Error::BadHeaderLength(header_len));
        }
        Ok(Header {
            version,
            payload_len: u32_at(b, 8),
            crc: u32_at(b, 12),
            tensor_count: u16_at(b, 16),
            op_count: u16_at(b, 18),
            input: u16_at(b, 20),
            output: u16_at(b, 22),
        })
    }
}

/// One 16-byte entry of the tensor table: an NHWC int8 tensor with batch 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorRecord {
    pub shape: Shape,
    /// Real value of one step (host-side information: quantizing inputs, dequantizing outputs).
    pub scale: f32,
    pub zero_point: i32,
}

impl TensorRecord {
    pub fn encode(&self) -> [u8; TENSOR_RECORD_LEN] {
        let mut b = [0u8; TENSOR_RECORD_LEN];
        put_shape(&mut b[0..6], self.shape);
        b[8..12].copy_from_slice(&self.scale.to_le_bytes());
        b[12..16].copy_from_slice(&self.zero_point.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> (TensorRecord, u16) {
        let record = TensorRecord { shape: shape_at(b, 0), scale: f32::from_le_bytes([b[8], b[9], b[10], b[11]]), zero_point: i32_at(b, 12) };
        (record, u16_at(b, 6))
    }
}

/// Where a data array lies, relative to the start of the payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Section {
    pub offset: u32,
    pub len: u32,
}

/// One 96-byte entry of the op list, as stored (not yet validated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpRecord {
    pub op: u8,
    pub padding: u8,
    pub kernel_h: u8,
    pub kernel_w: u8,
    pub stride_h: u8,
    pub stride_w: u8,
    pub act_min: i8,
    pub act_max: i8,
    pub inputs: [u16; 2],
    pub output: u16,
    pub depth_multiplier: u8,
    /// How the weights section is ordered (see [`WeightLayout`]).
    pub weight_layout: u8,
    /// Op-specific integers (see `shared/FORMAT.md`).
    pub params: [i32; 8],
    pub weights: Section,
    pub bias: Section,
    pub multipliers: Section,
    pub shifts: Section,
    /// Bytes 80..96, which must be zero.
    pub reserved: [u8; 16],
}

impl Default for OpRecord {
    fn default() -> Self {
        OpRecord {
            op: 0,
            padding: 0,
            kernel_h: 0,
            kernel_w: 0,
            stride_h: 0,
            stride_w: 0,
            act_min: i8::MIN,
            act_max: i8::MAX,
            inputs: [0, NO_TENSOR],
            output: 0,
            depth_multiplier: 0,
            weight_layout: 0,
            params: [0; 8],
            weights: Section::default(),
            bias: Section::default(),
            multipliers: Section::default(),
            shifts: Section::default(),
            reserved: [0; 16],
        }
    }
}

impl OpRecord {
    pub fn encode(&self) -> [u8; OP_RECORD_LEN] {
        let mut b = [0u8; OP_RECORD_LEN];
        b[..8].copy_from_slice(&[
            self.op,
            self.padding,
            self.kernel_h,
            self.kernel_w,
            self.stride_h,
            self.stride_w,
            self.act_min as u8,
            self.act_max as u8,
        ]);
        b[8..10].copy_from_slice(&self.inputs[0].to_le_bytes());
        b[10..12].copy_from_slice(&self.inputs[1].to_le_bytes());
        b[12..14].copy_from_slice(&self.output.to_le_bytes());
        b[14] = self.depth_multiplier;
        b[15] = self.weight_layout;
        for (i, p) in self.params.iter().enumerate() {
            b[16 + 4 * i..20 + 4 * i].copy_from_slice(&p.to_le_bytes());
        }
        for (i, s) in self.sections().iter().enumerate() {
            b[48 + 8 * i..52 + 8 * i].copy_from_slice(&s.offset.to_le_bytes());
            b[52 + 8 * i..56 + 8 * i].copy_from_slice(&s.len.to_le_bytes());
        }
        b[80..96].copy_from_slice(&self.reserved);
        b
    }

    pub fn decode(b: &[u8; OP_RECORD_LEN]) -> OpRecord {
        let section = |at: usize| Section { offset: u32_at(b, at), len: u32_at(b, at + 4) };
        let mut params = [0i32; 8];
        for (i, p) in params.iter_mut().enumerate() {
            *p = i32_at(b, 16 + 4 * i);
        }
        let mut reserved = [0u8; 16];
        reserved.copy_from_slice(&b[80..96]);
        OpRecord {
            op: b[0],
            padding: b[1],
            kernel_h: b[2],
            kernel_w: b[3],
            stride_h: b[4],
            stride_w: b[5],
            act_min: b[6] as i8,
            act_max: b[7] as i8,
            inputs: [u16_at(b, 8), u16_at(b, 10)],
            output: u16_at(b, 12),
            depth_multiplier: b[14],
            weight_layout: b[15],
            params,
            weights: section(48),
            bias: section(56),
            multipliers: section(64),
            shifts: section(72),
            reserved,
        }
    }

    /// The four data sections in their stored order.
    pub fn sections(&self) -> [Section; 4] {
        [self.weights, self.bias, self.multipliers, self.shifts]
    }
}

/// A validated op, ready for its kernel.
#[derive(Clone, Copy, Debug)]
pub enum Layer<'a> {
    Conv2d(Conv2d<'a>),
    DepthwiseConv2d(DepthwiseConv2d<'a>),
    MaxPool2d(Pool),
    AvgPool2d(Pool),
    FullyConnected(FullyConnected<'a>),
    Add(Add),
    Mean(Mean),
    Pad(Pad),
    /// A reinterpretation of the NHWC buffer: no arithmetic, no copy.
    Reshape { input: Shape, output: Shape },
    Softmax(Softmax),
}

/// A parsed, fully validated model borrowing the blob it came from.
#[derive(Clone, Copy, Debug)]
pub struct Model<'a> {
    header: Header,
    payload: &'a [u8],
}

impl<'a> Model<'a> {
    /// Parse and validate a model. Bytes after the declared payload (e.g. erased flash) are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Model<'a>, Error> {
        let header = Header::decode(bytes)?;
        let end = HEADER_LEN.checked_add(header.payload_len as usize).ok_or(Error::SizeOverflow)?;
        let model = bytes.get(..end).ok_or(Error::Truncated { needed: end, available: bytes.len() })?;
        let computed = model_crc(model);
        if computed != header.crc {
            return Err(Error::CrcMismatch { stored: header.crc, computed });
        }
        // The CRC holds: the rest of the header is as written. Its reserved fields must be 0.
        if model[24..32].iter().any(|&b| b != 0) {
            return Err(Error::Reserved { what: "header bytes 24..32" });
        }
        let (tensors, ops) = (header.tensor_count as usize, header.op_count as usize);
        if tensors == 0 || tensors > MAX_TENSORS {
            return Err(Error::TensorCount(header.tensor_count));
        }
        if ops == 0 || ops > MAX_OPS {
            return Err(Error::LayerCount(header.op_count));
        }
        let payload = &model[HEADER_LEN..];
        let tables = tensors * TENSOR_RECORD_LEN + ops * OP_RECORD_LEN;
        if payload.len() < tables {
            return Err(Error::PayloadTooShort { needed: tables, declared: payload.len() });
        }
        let model = Model { header, payload };
        model.validate()?;
        Ok(model)
    }

    fn validate(&self) -> Result<(), Error> {
        for t in 0..self.tensor_count() {
            let (record, reserved) = self.tensor_record_raw(t);
            check_tensor(t as u16, &record, reserved)?;
        }
        let (input, output) = (self.header.input as usize, self.header.output as usize);
        if input >= self.tensor_count() || output >= self.tensor_count() {
            return Err(Error::BadTensorRef { op: None, tensor: if input >= self.tensor_count() { input as u16 } else { output as u16 } });
        }
        // Which tensors hold a value so far: the model input, then each op's output in turn.
        let mut produced = [false; MAX_TENSORS];
        produced[input] = true;
        let mut section_end = self.tables_len();
        for i in 0..self.op_count() {
            let rec = self.op_record(i);
            let op = i as u16;
            if rec.reserved.iter().any(|&b| b != 0) {
                return Err(Error::Reserved { what: "op record bytes 80..96" });
            }
            let wants_two = rec.op == Op::Add as u8;
            for (k, &t) in rec.inputs.iter().enumerate() {
                let used = k == 0 || wants_two;
                if !used {
                    if t != NO_TENSOR {
                        return Err(Error::BadParameter { layer: op, what: "second input given to an op that takes one" });
                    }
                    continue;
                }
                if t as usize >= self.tensor_count() {
                    return Err(Error::BadTensorRef { op: Some(op), tensor: t });
                }
                if !produced[t as usize] {
                    return Err(Error::NotTopological { op, tensor: t });
                }
            }
            let out = rec.output as usize;
            if out >= self.tensor_count() {
                return Err(Error::BadTensorRef { op: Some(op), tensor: rec.output });
            }
            if produced[out] {
                return Err(Error::TensorWrittenTwice { op, tensor: rec.output });
            }
            produced[out] = true;
            section_end = check_sections(op, &rec, section_end, self.payload.len())?;
            decode_op(self, op, &rec, Values::Check)?;
        }
        if let Some(t) = produced[..self.tensor_count()].iter().position(|&p| !p) {
            return Err(Error::TensorNeverWritten { tensor: t as u16 });
        }
        Ok(())
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Tensors in the model (never above [`MAX_TENSORS`]: `parse` refuses more; the bound is
    /// restated so that the compiler sees every table index in range).
    pub fn tensor_count(&self) -> usize {
        (self.header.tensor_count as usize).min(MAX_TENSORS)
    }

    /// Ops in the model (never above [`MAX_OPS`], as for [`Model::tensor_count`]).
    pub fn op_count(&self) -> usize {
        (self.header.op_count as usize).min(MAX_OPS)
    }

    /// Bytes of the tensor table and op list at the start of the payload.
    fn tables_len(&self) -> usize {
        self.tensor_count() * TENSOR_RECORD_LEN + self.op_count() * OP_RECORD_LEN
    }

    /// Total bytes the model occupies (header + payload).
    pub fn byte_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    fn tensor_record_raw(&self, t: usize) -> (TensorRecord, u16) {
        match self.payload.get(t * TENSOR_RECORD_LEN..(t + 1) * TENSOR_RECORD_LEN) {
            Some(b) => TensorRecord::decode(b),
            None => (TensorRecord { shape: Shape::default(), scale: 0.0, zero_point: 0 }, 0),
        }
    }

    /// Tensor `t` (a zeroed record when out of range).
    pub fn tensor(&self, t: usize) -> TensorRecord {
        self.tensor_record_raw(t).0
    }

    pub fn input_tensor(&self) -> usize {
        self.header.input as usize
    }

    pub fn output_tensor(&self) -> usize {
        self.header.output as usize
    }

    pub fn input_shape(&self) -> Shape {
        self.tensor(self.input_tensor()).shape
    }

    pub fn output_shape(&self) -> Shape {
        self.tensor(self.output_tensor()).shape
    }

    /// The raw entry of op `i` (a default record when out of range).
    pub fn op_record(&self, i: usize) -> OpRecord {
        let at = self.tensor_count() * TENSOR_RECORD_LEN + i * OP_RECORD_LEN;
        match self.payload.get(at..at + OP_RECORD_LEN).and_then(|b| <&[u8; OP_RECORD_LEN]>::try_from(b).ok()) {
            Some(b) => OpRecord::decode(b),
            None => OpRecord::default(),
        }
    }

    /// Op `i`, validated. Cannot fail for `i < op_count()` of a parsed model.
    pub fn op(&self, i: usize) -> Result<Layer<'a>, Error> {
        if i >= self.op_count() {
            return Err(Error::LayerCount(i as u16));
        }
        // `parse` checked every op's values (bias and requantization ranges); decoding again
        // needs only the structure.
        decode_op(self, i as u16, &self.op_record(i), Values::Trusted)
    }

    /// The op that produces tensor `t` (`None` for the model input).
    pub fn producer(&self, t: usize) -> Option<usize> {
        (0..self.op_count()).find(|&i| self.op_record(i).output as usize == t)
    }

    /// The ops that read tensor `t`.
    pub fn consumers(&self, t: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.op_count()).filter(move |&i| {
            let r = self.op_record(i);
            r.inputs[0] as usize == t || (r.inputs[1] != NO_TENSOR && r.inputs[1] as usize == t)
        })
    }

    /// The logits: the input of the op producing the output when that op is a softmax, else the
    /// output.
    pub fn logits_tensor(&self) -> usize {
        match self.producer(self.output_tensor()).map(|i| self.op_record(i)) {
            Some(r) if r.op == Op::Softmax as u8 => r.inputs[0] as usize,
            _ => self.output_tensor(),
        }
    }
}

fn check_tensor(t: u16, rec: &TensorRecord, reserved: u16) -> Result<(), Error> {
    let bad = |what| Error::BadTensor { tensor: t, what };
    if reserved != 0 {
        return Err(Error::Reserved { what: "tensor record bytes 6..8" });
    }
    if rec.shape.is_empty() {
        return Err(bad("empty shape"));
    }
    if rec.shape.len()? > MAX_TENSOR_BYTES {
        return Err(Error::TensorTooLarge { tensor: t, bytes: rec.shape.len()?, max: MAX_TENSOR_BYTES });
    }
    if !rec.scale.is_finite() || rec.scale <= 0.0 {
        return Err(bad("scale not a positive finite number"));
    }
    if !(-128..=127).contains(&rec.zero_point) {
        return Err(bad("zero point outside int8"));
    }
    Ok(())
}

/// An op's sections lie after the tables and after the previous op's, 4-byte aligned, inside
/// the payload, in their stored order; unused ones are `(0, 0)`. Returns where they end.
fn check_sections(op: u16, rec: &OpRecord, mut end: usize, payload: usize) -> Result<usize, Error> {
    for (s, name) in rec.sections().into_iter().zip(["weights", "bias", "multipliers", "shifts"]) {
        if s.len == 0 {
            if s.offset != 0 {
                return Err(Error::SectionOutOfRange { layer: op, section: name });
            }
            continue;
        }
        let start = s.offset as usize;
        if !start.is_multiple_of(SECTION_ALIGN) {
            return Err(Error::SectionMisaligned { layer: op, section: name });
        }
        if start < end {
            return Err(Error::SectionOverlap { layer: op, section: name });
        }
        end = start.checked_add(s.len as usize).filter(|&e| e <= payload).ok_or(Error::SectionOutOfRange { layer: op, section: name })?;
    }
    Ok(end)
}

/// Whether decoding scans the per-channel values (biases, multipliers, shifts) for their ranges.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Values {
    Check,
    /// Already checked by [`Model::parse`].
    Trusted,
}

/// The tensors an op reads and writes, with their records.
struct Io {
    input: TensorRecord,
    input2: Option<TensorRecord>,
    output: TensorRecord,
}

fn decode_op<'a>(model: &Model<'a>, i: u16, rec: &OpRecord, values: Values) -> Result<Layer<'a>, Error> {
    let op = Op::from_code(rec.op).ok_or(Error::UnknownOp { layer: i, op: rec.op })?;
    if rec.act_min > rec.act_max {
        return Err(Error::BadParameter { layer: i, what: "act_min > act_max" });
    }
    let io = Io {
        input: model.tensor(rec.inputs[0] as usize),
        input2: (rec.inputs[1] != NO_TENSOR).then(|| model.tensor(rec.inputs[1] as usize)),
        output: model.tensor(rec.output as usize),
    };
    let payload = model.payload;
    let unused = |what| if rec.params.iter().any(|&p| p != 0) { Err(Error::BadParameter { layer: i, what }) } else { Ok(()) };
    Ok(match op {
        Op::Conv2d => {
            unused("conv2d takes no op parameters")?;
            Layer::Conv2d(conv2d(payload, i, rec, &io, values)?)
        }
        Op::DepthwiseConv2d => {
            unused("depthwise_conv2d takes no op parameters")?;
            Layer::DepthwiseConv2d(depthwise(payload, i, rec, &io, values)?)
        }
        Op::MaxPool2d => {
            unused("pools take no op parameters")?;
            Layer::MaxPool2d(pool(i, rec, &io)?)
        }
        Op::AvgPool2d => {
            unused("pools take no op parameters")?;
            Layer::AvgPool2d(pool(i, rec, &io)?)
        }
        Op::FullyConnected => {
            unused("fully_connected takes no op parameters")?;
            Layer::FullyConnected(fully_connected(payload, i, rec, &io, values)?)
        }
        Op::Add => Layer::Add(add(i, rec, &io)?),
        Op::Mean => Layer::Mean(mean(i, rec, &io)?),
        Op::Pad => Layer::Pad(pad(i, rec, &io)?),
        Op::Reshape => {
            unused("reshape takes no op parameters")?;
            if io.input.shape.len()? != io.output.shape.len()? {
                return Err(Error::ShapeMismatch { layer: i, what: "reshape changes the element count" });
            }
            same_quantization(i, &io, "reshape changes the quantization")?;
            Layer::Reshape { input: io.input.shape, output: io.output.shape }
        }
        Op::Softmax => Layer::Softmax(softmax(i, rec, &io)?),
    })
}

fn no_weights(i: u16, rec: &OpRecord) -> Result<(), Error> {
    if rec.sections().iter().any(|s| s.len != 0) || rec.weight_layout != 0 {
        return Err(Error::BadParameter { layer: i, what: "op without weights has data sections or a weight layout" });
    }
    Ok(())
}

fn same_quantization(i: u16, io: &Io, what: &'static str) -> Result<(), Error> {
    if io.input.zero_point != io.output.zero_point || io.input.scale.to_bits() != io.output.scale.to_bits() {
        return Err(Error::BadParameter { layer: i, what });
    }
    Ok(())
}

fn no_window(i: u16, rec: &OpRecord) -> Result<(), Error> {
    if rec.padding != 0 || rec.kernel_h != 0 || rec.kernel_w != 0 || rec.stride_h != 0 || rec.stride_w != 0 || rec.depth_multiplier != 0 {
        return Err(Error::BadParameter { layer: i, what: "window fields set on an op without a window" });
    }
    Ok(())
}

/// Padding of a window op whose parameters must produce `out` from `input`.
fn window_output(i: u16, rec: &OpRecord, input: Shape, out: Shape) -> Result<Padding, Error> {
    let bad = |what| Error::BadParameter { layer: i, what };
    let padding = Padding::from_code(rec.padding).ok_or(bad("unknown padding code"))?;
    let h = padding.output_size(input.h as usize, rec.kernel_h as usize, rec.stride_h as usize);
    let w = padding.output_size(input.w as usize, rec.kernel_w as usize, rec.stride_w as usize);
    match (h, w) {
        (Some(h), Some(w)) if h == out.h as usize && w == out.w as usize => Ok(padding),
        (Some(_), Some(_)) => Err(Error::ShapeMismatch { layer: i, what: "output size does not follow from kernel, stride and padding" }),
        _ => Err(bad("zero kernel or stride, or kernel larger than the input")),
    }
}

fn conv2d<'a>(payload: &'a [u8], i: u16, rec: &OpRecord, io: &Io, values: Values) -> Result<Conv2d<'a>, Error> {
    let padding = window_output(i, rec, io.input.shape, io.output.shape)?;
    if rec.depth_multiplier != 0 {
        return Err(Error::BadParameter { layer: i, what: "depth multiplier on a conv2d" });
    }
    let taps = (rec.kernel_h as usize * rec.kernel_w as usize).checked_mul(io.input.shape.c as usize).ok_or(Error::SizeOverflow)?;
    let channels = io.output.shape.c as usize;
    let layout = weight_layout(i, rec)?;
    let winograd = layout == WeightLayout::Winograd2x2;
    if winograd && (rec.kernel_h, rec.kernel_w, rec.stride_h, rec.stride_w) != (3, 3, 1, 1) {
        return Err(Error::BadParameter { layer: i, what: "Winograd weights need a 3x3 kernel with stride 1" });
    }
    let weights = section(payload, i, rec.weights, "weights", layout.bytes(channels, taps).ok_or(Error::SizeOverflow)?)?;
    let bias = I32Le::new(section(payload, i, rec.bias, "bias", 4 * channels)?);
    if values == Values::Check {
        check_accumulator(i, taps, bias)?;
        if winograd && !winograd_blocks_valid(crate::types::as_i8(weights), channels, io.input.shape.c as usize, taps) {
            return Err(Error::BadParameter { layer: i, what: "a Winograd weight block is not the transform of an int8 3x3 kernel" });
        }
    }
    Ok(Conv2d {
        input: io.input.shape,
        output: io.output.shape,
        kernel_h: rec.kernel_h,
        kernel_w: rec.kernel_w,
        stride_h: rec.stride_h,
        stride_w: rec.stride_w,
        padding,
        input_zp: io.input.zero_point,
        weights: crate::types::as_i8(weights),
        layout,
        bias,
        requant: requant(payload, i, rec, io, channels, values)?,
    })
}

fn depthwise<'a>(payload: &'a [u8], i: u16, rec: &OpRecord, io: &Io, values: Values) -> Result<DepthwiseConv2d<'a>, Error> {
    let padding = window_output(i, rec, io.input.shape, io.output.shape)?;
    let multiplier = rec.depth_multiplier as usize;
    if multiplier == 0 || io.output.shape.c as usize != io.input.shape.c as usize * multiplier {
        return Err(Error::ShapeMismatch { layer: i, what: "depthwise output channels are not input channels x depth multiplier" });
    }
    if rec.weight_layout != WeightLayout::Canonical as u8 {
        return Err(Error::BadParameter { layer: i, what: "depthwise weights must be in the canonical layout" });
    }
    let taps = rec.kernel_h as usize * rec.kernel_w as usize;
    let channels = io.output.shape.c as usize;
    let weights = section(payload, i, rec.weights, "weights", taps.checked_mul(channels).ok_or(Error::SizeOverflow)?)?;
    let bias = I32Le::new(section(payload, i, rec.bias, "bias", 4 * channels)?);
    if values == Values::Check {
        check_accumulator(i, taps, bias)?;
    }
    Ok(DepthwiseConv2d {
        input: io.input.shape,
        output: io.output.shape,
        kernel_h: rec.kernel_h,
        kernel_w: rec.kernel_w,
        stride_h: rec.stride_h,
        stride_w: rec.stride_w,
        padding,
        depth_multiplier: multiplier as u16,
        input_zp: io.input.zero_point,
        weights: crate::types::as_i8(weights),
        bias,
        requant: requant(payload, i, rec, io, channels, values)?,
    })
}

fn pool(i: u16, rec: &OpRecord, io: &Io) -> Result<Pool, Error> {
    no_weights(i, rec)?;
    let padding = window_output(i, rec, io.input.shape, io.output.shape)?;
    if rec.depth_multiplier != 0 {
        return Err(Error::BadParameter { layer: i, what: "depth multiplier on a pool" });
    }
    if io.input.shape.c != io.output.shape.c {
        return Err(Error::ShapeMismatch { layer: i, what: "pooling changes the channel count" });
    }
    same_quantization(i, io, "pooling changes the quantization")?;
    Ok(Pool {
        input: io.input.shape,
        output: io.output.shape,
        kernel_h: rec.kernel_h,
        kernel_w: rec.kernel_w,
        stride_h: rec.stride_h,
        stride_w: rec.stride_w,
        padding,
        act_min: rec.act_min,
        act_max: rec.act_max,
    })
}

fn fully_connected<'a>(payload: &'a [u8], i: u16, rec: &OpRecord, io: &Io, values: Values) -> Result<FullyConnected<'a>, Error> {
    no_window(i, rec)?;
    let input_len = io.input.shape.len()?;
    if io.output.shape.h != 1 || io.output.shape.w != 1 {
        return Err(Error::ShapeMismatch { layer: i, what: "fully-connected output must be 1x1xN" });
    }
    let output_len = io.output.shape.c as usize;
    let layout = weight_layout(i, rec)?;
    let weights = section(payload, i, rec.weights, "weights", layout.bytes(output_len, input_len).ok_or(Error::SizeOverflow)?)?;
    let bias = I32Le::new(section(payload, i, rec.bias, "bias", 4 * output_len)?);
    if values == Values::Check {
        check_accumulator(i, input_len, bias)?;
    }
    Ok(FullyConnected {
        input_len,
        output_len,
        input_zp: io.input.zero_point,
        weights: crate::types::as_i8(weights),
        layout,
        bias,
        requant: requant(payload, i, rec, io, output_len, values)?,
    })
}

fn add(i: u16, rec: &OpRecord, io: &Io) -> Result<Add, Error> {
    no_weights(i, rec)?;
    no_window(i, rec)?;
    let bad = |what| Error::BadParameter { layer: i, what };
    let input2 = io.input2.ok_or(bad("add needs two inputs"))?;
    if io.input.shape != io.output.shape || input2.shape != io.output.shape {
        return Err(Error::ShapeMismatch { layer: i, what: "add inputs and output must have one shape (no broadcasting)" });
    }
    let [left_shift, m1, s1, m2, s2, mo, so, unused] = rec.params;
    if unused != 0 {
        return Err(bad("add parameter 7 must be 0"));
    }
    // (x - zp) << left_shift must fit in int32 for |x - zp| <= 255.
    if !(0..=22).contains(&left_shift) {
        return Err(bad("add left shift outside 0..=22"));
    }
    if m1 < 0 || m2 < 0 || mo < 0 || !(-31..=0).contains(&s1) || !(-31..=0).contains(&s2) || !(-31..=30).contains(&so) {
        return Err(bad("add multipliers negative or shifts out of range"));
    }
    Ok(Add {
        len: io.output.shape.len()?,
        input1_zp: io.input.zero_point,
        input2_zp: input2.zero_point,
        output_zp: io.output.zero_point,
        left_shift,
        input1_multiplier: m1,
        input1_shift: s1,
        input2_multiplier: m2,
        input2_shift: s2,
        output_multiplier: mo,
        output_shift: so,
        act_min: rec.act_min,
        act_max: rec.act_max,
    })
}

fn mean(i: u16, rec: &OpRecord, io: &Io) -> Result<Mean, Error> {
    no_weights(i, rec)?;
    no_window(i, rec)?;
    let bad = |what| Error::BadParameter { layer: i, what };
    if io.output.shape.h != 1 || io.output.shape.w != 1 || io.output.shape.c != io.input.shape.c {
        return Err(Error::ShapeMismatch { layer: i, what: "mean over height and width must give 1x1xC" });
    }
    let [multiplier, shift, unused @ ..] = rec.params;
    if unused.iter().any(|&p| p != 0) {
        return Err(bad("mean parameters 2..8 must be 0"));
    }
    if multiplier < 0 || !(-31..=30).contains(&shift) {
        return Err(bad("mean multiplier negative or shift out of range"));
    }
    let count = io.input.shape.h as usize * io.input.shape.w as usize;
    // The sum of `count` int8 differences must fit in int32 (always, for tensors the format allows).
    if count > MAX_TENSOR_BYTES {
        return Err(bad("mean over too many elements"));
    }
    Ok(Mean {
        input: io.input.shape,
        input_zp: io.input.zero_point,
        output_zp: io.output.zero_point,
        multiplier,
        shift,
        act_min: rec.act_min,
        act_max: rec.act_max,
    })
}

fn pad(i: u16, rec: &OpRecord, io: &Io) -> Result<Pad, Error> {
    no_weights(i, rec)?;
    no_window(i, rec)?;
    let [top, bottom, left, right, unused @ ..] = rec.params;
    if unused.iter().any(|&p| p != 0) {
        return Err(Error::BadParameter { layer: i, what: "pad parameters 4..8 must be 0" });
    }
    let (ih, iw) = (io.input.shape.h as i64, io.input.shape.w as i64);
    let fits = [top, bottom, left, right].iter().all(|&p| (0..=u16::MAX as i32).contains(&p));
    if !fits || ih + top as i64 + bottom as i64 != io.output.shape.h as i64 || iw + left as i64 + right as i64 != io.output.shape.w as i64 || io.input.shape.c != io.output.shape.c {
        return Err(Error::ShapeMismatch { layer: i, what: "pad amounts do not turn the input shape into the output shape" });
    }
    same_quantization(i, io, "pad changes the quantization")?;
    if rec.act_min != i8::MIN || rec.act_max != i8::MAX {
        return Err(Error::BadParameter { layer: i, what: "pad has no activation" });
    }
    Ok(Pad { input: io.input.shape, output: io.output.shape, top: top as u16, left: left as u16, value: io.output.zero_point as i8 })
}

fn softmax(i: u16, rec: &OpRecord, io: &Io) -> Result<Softmax, Error> {
    no_weights(i, rec)?;
    no_window(i, rec)?;
    let bad = |what| Error::BadParameter { layer: i, what };
    if io.input.shape != io.output.shape {
        return Err(Error::ShapeMismatch { layer: i, what: "softmax changes the shape" });
    }
    if io.output.zero_point != -128 {
        return Err(bad("int8 softmax output zero point must be -128"));
    }
    let [multiplier, left_shift, diff_min, unused @ ..] = rec.params;
    if unused.iter().any(|&p| p != 0) {
        return Err(bad("softmax parameters 3..8 must be 0"));
    }
    if multiplier <= 0 || !(0..=31).contains(&left_shift) || diff_min > 0 {
        return Err(bad("softmax multiplier, shift or diff_min"));
    }
    // The kernel computes `diff << left_shift` for diff in diff_min..=0: it must fit in int32.
    if ((-(diff_min as i64)) << left_shift) > i32::MAX as i64 {
        return Err(bad("softmax diff_min too large for its shift"));
    }
    let depth = io.input.shape.c as usize;
    Ok(Softmax { rows: io.input.shape.len()? / depth.max(1), depth, input_multiplier: multiplier, input_left_shift: left_shift, diff_min })
}

fn weight_layout(i: u16, rec: &OpRecord) -> Result<WeightLayout, Error> {
    WeightLayout::from_code(rec.weight_layout).ok_or(Error::BadParameter { layer: i, what: "unknown weight layout" })
}

fn requant<'a>(payload: &'a [u8], i: u16, rec: &OpRecord, io: &Io, channels: usize, values: Values) -> Result<Requant<'a>, Error> {
    let multipliers = I32Le::new(section(payload, i, rec.multipliers, "multipliers", 4 * channels)?);
    let shifts = I32Le::new(section(payload, i, rec.shifts, "shifts", 4 * channels)?);
    let requant = Requant::new(multipliers, shifts, io.output.zero_point, rec.act_min, rec.act_max);
    if values == Values::Trusted {
        return Ok(requant);
    }
    if multipliers.iter().any(|m| m < 0) {
        return Err(Error::BadParameter { layer: i, what: "negative requantization multiplier" });
    }
    if shifts.iter().any(|s| !(-31..=30).contains(&s)) {
        return Err(Error::BadParameter { layer: i, what: "requantization shift outside -31..=30" });
    }
    Ok(requant)
}

/// Largest |acc| = taps * 128 * 255 + max |bias| must fit in int32 so the kernels are exact.
/// Every block of a [`WeightLayout::Winograd2x2`] section is the transform of an int8 kernel (so
/// the Winograd kernel and the reference, which reads the kernel back, compute the same), and
/// the padding channels' blocks are zero.
fn winograd_blocks_valid(weights: &[i8], channels: usize, input_channels: usize, taps: usize) -> bool {
    let ic4 = input_channels.div_ceil(4) * 4;
    let value = |o: usize, i: usize, p: usize| WeightLayout::Winograd2x2.weight_value(weights, WeightLayout::winograd_index(o, i, p, taps));
    (0..channels.div_ceil(4) * 4).all(|o| {
        (0..ic4).all(|i| {
            let u: [i32; 16] = core::array::from_fn(|p| value(o, i, p));
            if o < channels && i < input_channels {
                crate::types::winograd_kernel(&u).is_some()
            } else {
                u == [0; 16]
            }
        })
    })
}

fn check_accumulator(i: u16, taps: usize, bias: I32Le) -> Result<(), Error> {
    let max_bias = bias.iter().map(|b| (b as i64).abs()).max().unwrap_or(0);
    let worst = (taps as i64).saturating_mul(128 * 255).saturating_add(max_bias);
    if worst > i32::MAX as i64 {
        return Err(Error::AccumulatorOverflow { layer: i });
    }
    Ok(())
}

fn section<'a>(payload: &'a [u8], i: u16, s: Section, name: &'static str, expected: usize) -> Result<&'a [u8], Error> {
    let out_of_range = Error::SectionOutOfRange { layer: i, section: name };
    if s.len as usize != expected {
        return Err(out_of_range);
    }
    let start = s.offset as usize;
    let end = start.checked_add(s.len as usize).ok_or(out_of_range)?;
    payload.get(start..end).ok_or(out_of_range)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    u32_at(b, at) as i32
}

fn shape_at(b: &[u8], at: usize) -> Shape {
    Shape::new(u16_at(b, at), u16_at(b, at + 2), u16_at(b, at + 4))
}

fn put_shape(b: &mut [u8], s: Shape) {
    b[0..2].copy_from_slice(&s.h.to_le_bytes());
    b[2..4].copy_from_slice(&s.w.to_le_bytes());
    b[4..6].copy_from_slice(&s.c.to_le_bytes());
}
