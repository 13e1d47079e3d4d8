//! The Lepton model format (`.lpk`), version 1: see `shared/FORMAT.md`.
//!
//! Parsing is zero-copy and total: [`Model::parse`] checks everything (lengths, CRC, every layer's
//! parameters, that shapes chain, that every data section lies inside the payload) and returns a
//! typed [`Error`] for any malformed input. Once parsed, [`Model::layer`] cannot fail.

use crate::kernels::{Conv2d, FullyConnected, Pool, Softmax};
use crate::types::{I32Le, Padding, Requant, Shape, WeightLayout};
use crate::Error;

pub const MAGIC: [u8; 4] = *b"LPTN";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 32;
pub const RECORD_LEN: usize = 88;
/// Pixel (0..=255) to quantized input lookup table, right after the layer table.
pub const INPUT_LUT_LEN: usize = 256;
pub const MAX_LAYERS: u16 = 64;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// CRC-32 (IEEE 802.3, as zlib and PNG) of `bytes`: the checksum stored in the header.
pub fn crc32(bytes: &[u8]) -> u32 {
    CRC32.checksum(bytes)
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
}

impl Op {
    pub fn from_code(code: u8) -> Option<Op> {
        Some(match code {
            1 => Op::Conv2d,
            2 => Op::MaxPool2d,
            3 => Op::AvgPool2d,
            4 => Op::FullyConnected,
            5 => Op::Reshape,
            6 => Op::Softmax,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Conv2d => "conv2d",
            Op::MaxPool2d => "max_pool2d",
            Op::AvgPool2d => "avg_pool2d",
            Op::FullyConnected => "fully_connected",
            Op::Reshape => "reshape",
            Op::Softmax => "softmax",
        }
    }
}

/// The fixed 32-byte header. All integers little-endian.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Header {
    pub version: u16,
    pub payload_len: u32,
    pub payload_crc: u32,
    pub layer_count: u16,
    pub flags: u16,
    pub input: Shape,
    /// Real value of one input step (host-side information; the device uses the input LUT).
    pub input_scale: f32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.payload_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.payload_crc.to_le_bytes());
        b[16..18].copy_from_slice(&self.layer_count.to_le_bytes());
        b[18..20].copy_from_slice(&self.flags.to_le_bytes());
        put_shape(&mut b[20..26], self.input);
        b[28..32].copy_from_slice(&self.input_scale.to_le_bytes());
        b
    }

    /// Decode and check the header alone (magic, version, header length).
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
            payload_crc: u32_at(b, 12),
            layer_count: u16_at(b, 16),
            flags: u16_at(b, 18),
            input: shape_at(b, 20),
            input_scale: f32::from_le_bytes([b[28], b[29], b[30], b[31]]),
        })
    }
}

/// Where a data array lies, relative to the start of the payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Section {
    pub offset: u32,
    pub len: u32,
}

/// One 88-byte entry of the layer table, as stored (not yet validated).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerRecord {
    pub op: u8,
    pub padding: u8,
    pub kernel_h: u8,
    pub kernel_w: u8,
    pub stride_h: u8,
    pub stride_w: u8,
    pub act_min: i8,
    pub act_max: i8,
    pub input: Shape,
    pub output: Shape,
    pub input_zp: i32,
    pub output_zp: i32,
    /// Real value of one output step (host-side information, e.g. to dequantize logits).
    pub output_scale: f32,
    /// Op-specific integers. Softmax: input multiplier, input left shift, diff_min.
    pub params: [i32; 3],
    pub weights: Section,
    pub bias: Section,
    pub multipliers: Section,
    pub shifts: Section,
    /// How the weights section is ordered (see [`WeightLayout`]).
    pub weight_layout: u8,
}

impl Default for LayerRecord {
    fn default() -> Self {
        LayerRecord {
            op: 0,
            padding: 0,
            kernel_h: 0,
            kernel_w: 0,
            stride_h: 0,
            stride_w: 0,
            act_min: i8::MIN,
            act_max: i8::MAX,
            input: Shape::default(),
            output: Shape::default(),
            input_zp: 0,
            output_zp: 0,
            output_scale: 0.0,
            params: [0; 3],
            weights: Section::default(),
            bias: Section::default(),
            multipliers: Section::default(),
            shifts: Section::default(),
            weight_layout: 0,
        }
    }
}

impl LayerRecord {
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0] = self.op;
        b[1] = self.padding;
        b[2] = self.kernel_h;
        b[3] = self.kernel_w;
        b[4] = self.stride_h;
        b[5] = self.stride_w;
        b[6] = self.act_min as u8;
        b[7] = self.act_max as u8;
        put_shape(&mut b[8..14], self.input);
        put_shape(&mut b[16..22], self.output);
        b[24..28].copy_from_slice(&self.input_zp.to_le_bytes());
        b[28..32].copy_from_slice(&self.output_zp.to_le_bytes());
        b[32..36].copy_from_slice(&self.output_scale.to_le_bytes());
        for (i, p) in self.params.iter().enumerate() {
            b[36 + 4 * i..40 + 4 * i].copy_from_slice(&p.to_le_bytes());
        }
        for (i, s) in [self.weights, self.bias, self.multipliers, self.shifts].iter().enumerate() {
            b[48 + 8 * i..52 + 8 * i].copy_from_slice(&s.offset.to_le_bytes());
            b[52 + 8 * i..56 + 8 * i].copy_from_slice(&s.len.to_le_bytes());
        }
        b[80] = self.weight_layout;
        b
    }

    pub fn decode(b: &[u8; RECORD_LEN]) -> LayerRecord {
        let section = |at: usize| Section { offset: u32_at(b, at), len: u32_at(b, at + 4) };
        LayerRecord {
            op: b[0],
            padding: b[1],
            kernel_h: b[2],
            kernel_w: b[3],
            stride_h: b[4],
            stride_w: b[5],
            act_min: b[6] as i8,
            act_max: b[7] as i8,
            input: shape_at(b, 8),
            output: shape_at(b, 16),
            input_zp: i32_at(b, 24),
            output_zp: i32_at(b, 28),
            output_scale: f32::from_le_bytes([b[32], b[33], b[34], b[35]]),
            params: [i32_at(b, 36), i32_at(b, 40), i32_at(b, 44)],
            weights: section(48),
            bias: section(56),
            multipliers: section(64),
            shifts: section(72),
            weight_layout: b[80],
        }
    }
}

/// A validated layer, ready for its kernel.
#[derive(Clone, Copy, Debug)]
pub enum Layer<'a> {
    Conv2d(Conv2d<'a>),
    MaxPool2d(Pool),
    AvgPool2d(Pool),
    FullyConnected(FullyConnected<'a>),
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
        let payload = bytes.get(HEADER_LEN..end).ok_or(Error::Truncated { needed: end, available: bytes.len() })?;
        let computed = crc32(payload);
        if computed != header.payload_crc {
            return Err(Error::CrcMismatch { stored: header.payload_crc, computed });
        }
        if header.layer_count == 0 || header.layer_count > MAX_LAYERS {
            return Err(Error::LayerCount(header.layer_count));
        }
        let tables = header.layer_count as usize * RECORD_LEN + INPUT_LUT_LEN;
        if payload.len() < tables {
            return Err(Error::Truncated { needed: HEADER_LEN + tables, available: bytes.len() });
        }
        if header.input.is_empty() {
            return Err(Error::ShapeMismatch { layer: 0, what: "empty input shape" });
        }
        let model = Model { header, payload };
        model.validate_chain()?;
        Ok(model)
    }

    fn validate_chain(&self) -> Result<(), Error> {
        let mut shape = self.header.input;
        let mut zp: Option<i32> = None;
        for i in 0..self.header.layer_count {
            let rec = self.record(i);
            if rec.input != shape {
                return Err(Error::ShapeMismatch { layer: i, what: "input shape differs from the previous output" });
            }
            if zp.is_some_and(|zp| zp != rec.input_zp) {
                return Err(Error::ShapeMismatch { layer: i, what: "input zero point differs from the previous output" });
            }
            decode_layer(self.payload, i, &rec, Values::Check)?;
            shape = rec.output;
            zp = Some(rec.output_zp);
        }
        Ok(())
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn layer_count(&self) -> usize {
        self.header.layer_count as usize
    }

    /// Total bytes the model occupies (header + payload).
    pub fn byte_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    pub fn input_shape(&self) -> Shape {
        self.header.input
    }

    pub fn output_shape(&self) -> Shape {
        self.record(self.header.layer_count.saturating_sub(1)).output
    }

    /// The raw table entry of layer `i` (zeroed record when out of range).
    pub fn record(&self, i: u16) -> LayerRecord {
        let at = i as usize * RECORD_LEN;
        match self.payload.get(at..at + RECORD_LEN).and_then(|b| <&[u8; RECORD_LEN]>::try_from(b).ok()) {
            Some(b) => LayerRecord::decode(b),
            None => LayerRecord::default(),
        }
    }

    /// Layer `i`, validated. Cannot fail for `i < layer_count()` of a parsed model.
    pub fn layer(&self, i: usize) -> Result<Layer<'a>, Error> {
        if i >= self.layer_count() {
            return Err(Error::LayerCount(i as u16));
        }
        // `parse` checked every layer's values (bias and requantization ranges); the bytes are
        // borrowed immutably, so decoding again needs only the structure. The engine decodes
        // each layer on every inference: the scans would cost ~30 K device instructions there.
        decode_layer(self.payload, i as u16, &self.record(i as u16), Values::Trusted)
    }

    /// The quantized value of each input pixel 0..=255.
    pub fn input_lut(&self) -> &'a [u8] {
        let at = self.layer_count() * RECORD_LEN;
        self.payload.get(at..at + INPUT_LUT_LEN).unwrap_or(&[])
    }

    /// Quantize an 8-bit grayscale image into `out` with the model's input table.
    pub fn quantize_input(&self, pixels: &[u8], out: &mut [i8]) -> Result<(), Error> {
        crate::types::expect_len(out.len(), pixels.len())?;
        let lut = self.input_lut();
        if lut.len() != INPUT_LUT_LEN {
            return Err(Error::Truncated { needed: INPUT_LUT_LEN, available: lut.len() });
        }
        for (o, &p) in out.iter_mut().zip(pixels) {
            *o = lut[p as usize] as i8;
        }
        Ok(())
    }
}

/// Whether decoding scans the per-channel values (biases, multipliers, shifts) for their ranges.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Values {
    Check,
    /// Already checked by [`Model::parse`].
    Trusted,
}

fn decode_layer<'a>(payload: &'a [u8], i: u16, rec: &LayerRecord, values: Values) -> Result<Layer<'a>, Error> {
    let op = Op::from_code(rec.op).ok_or(Error::UnknownOp { layer: i, op: rec.op })?;
    let bad = |what| Error::BadParameter { layer: i, what };
    if rec.act_min > rec.act_max {
        return Err(bad("act_min > act_max"));
    }
    for zp in [rec.input_zp, rec.output_zp] {
        if !(-128..=127).contains(&zp) {
            return Err(bad("zero point outside int8"));
        }
    }
    if rec.input.is_empty() || rec.output.is_empty() {
        return Err(Error::ShapeMismatch { layer: i, what: "empty tensor" });
    }
    Ok(match op {
        Op::Conv2d => Layer::Conv2d(conv2d(payload, i, rec, values)?),
        Op::MaxPool2d => Layer::MaxPool2d(pool(i, rec)?),
        Op::AvgPool2d => Layer::AvgPool2d(pool(i, rec)?),
        Op::FullyConnected => Layer::FullyConnected(fully_connected(payload, i, rec, values)?),
        Op::Reshape => {
            if rec.input.len()? != rec.output.len()? {
                return Err(Error::ShapeMismatch { layer: i, what: "reshape changes the element count" });
            }
            if rec.input_zp != rec.output_zp {
                return Err(bad("reshape changes the zero point"));
            }
            Layer::Reshape { input: rec.input, output: rec.output }
        }
        Op::Softmax => Layer::Softmax(softmax(i, rec)?),
    })
}

/// Output height and width that a window op's parameters produce from its input.
fn window_output(i: u16, rec: &LayerRecord) -> Result<(Padding, Shape), Error> {
    let bad = |what| Error::BadParameter { layer: i, what };
    let padding = Padding::from_code(rec.padding).ok_or(bad("unknown padding code"))?;
    let h = padding.output_size(rec.input.h as usize, rec.kernel_h as usize, rec.stride_h as usize);
    let w = padding.output_size(rec.input.w as usize, rec.kernel_w as usize, rec.stride_w as usize);
    match (h, w) {
        (Some(h), Some(w)) if h == rec.output.h as usize && w == rec.output.w as usize => {
            Ok((padding, rec.output))
        }
        (Some(_), Some(_)) => Err(Error::ShapeMismatch { layer: i, what: "output size does not follow from kernel, stride and padding" }),
        _ => Err(bad("zero kernel or stride, or kernel larger than the input")),
    }
}

fn conv2d<'a>(payload: &'a [u8], i: u16, rec: &LayerRecord, values: Values) -> Result<Conv2d<'a>, Error> {
    let (padding, _) = window_output(i, rec)?;
    let taps = (rec.kernel_h as usize * rec.kernel_w as usize)
        .checked_mul(rec.input.c as usize)
        .ok_or(Error::SizeOverflow)?;
    let channels = rec.output.c as usize;
    let layout = weight_layout(i, rec, taps)?;
    let weights = section(payload, i, rec.weights, "weights", layout.bytes(channels, taps).ok_or(Error::SizeOverflow)?)?;
    let weights = crate::types::as_i8(weights);
    let bias = I32Le::new(section(payload, i, rec.bias, "bias", 4 * channels)?);
    if values == Values::Check {
        check_accumulator(i, taps, bias)?;
    }
    Ok(Conv2d {
        input: rec.input,
        output: rec.output,
        kernel_h: rec.kernel_h,
        kernel_w: rec.kernel_w,
        stride_h: rec.stride_h,
        stride_w: rec.stride_w,
        padding,
        input_zp: rec.input_zp,
        weights,
        layout,
        bias,
        requant: requant(payload, i, rec, channels, values)?,
    })
}

fn pool(i: u16, rec: &LayerRecord) -> Result<Pool, Error> {
    let (padding, _) = window_output(i, rec)?;
    if rec.input.c != rec.output.c {
        return Err(Error::ShapeMismatch { layer: i, what: "pooling changes the channel count" });
    }
    if rec.input_zp != rec.output_zp {
        return Err(Error::BadParameter { layer: i, what: "pooling changes the zero point" });
    }
    Ok(Pool {
        input: rec.input,
        output: rec.output,
        kernel_h: rec.kernel_h,
        kernel_w: rec.kernel_w,
        stride_h: rec.stride_h,
        stride_w: rec.stride_w,
        padding,
        act_min: rec.act_min,
        act_max: rec.act_max,
    })
}

fn fully_connected<'a>(payload: &'a [u8], i: u16, rec: &LayerRecord, values: Values) -> Result<FullyConnected<'a>, Error> {
    let input_len = rec.input.len()?;
    if rec.output.h != 1 || rec.output.w != 1 {
        return Err(Error::ShapeMismatch { layer: i, what: "fully-connected output must be 1x1xN" });
    }
    let output_len = rec.output.c as usize;
    let layout = weight_layout(i, rec, input_len)?;
    let weights = section(payload, i, rec.weights, "weights", layout.bytes(output_len, input_len).ok_or(Error::SizeOverflow)?)?;
    let bias = I32Le::new(section(payload, i, rec.bias, "bias", 4 * output_len)?);
    if values == Values::Check {
        check_accumulator(i, input_len, bias)?;
    }
    Ok(FullyConnected {
        input_len,
        output_len,
        input_zp: rec.input_zp,
        weights: crate::types::as_i8(weights),
        layout,
        bias,
        requant: requant(payload, i, rec, output_len, values)?,
    })
}

fn softmax(i: u16, rec: &LayerRecord) -> Result<Softmax, Error> {
    let bad = |what| Error::BadParameter { layer: i, what };
    if rec.input != rec.output {
        return Err(Error::ShapeMismatch { layer: i, what: "softmax changes the shape" });
    }
    if rec.output_zp != -128 {
        return Err(bad("int8 softmax output zero point must be -128"));
    }
    let [multiplier, left_shift, diff_min] = rec.params;
    if multiplier <= 0 || !(0..=31).contains(&left_shift) || diff_min > 0 {
        return Err(bad("softmax multiplier, shift or diff_min"));
    }
    // The kernel computes `diff << left_shift` for diff in diff_min..=0: it must fit in int32.
    if ((-(diff_min as i64)) << left_shift) > i32::MAX as i64 {
        return Err(bad("softmax diff_min too large for its shift"));
    }
    let depth = rec.input.c as usize;
    Ok(Softmax { rows: rec.input.len()? / depth.max(1), depth, input_multiplier: multiplier, input_left_shift: left_shift, diff_min })
}

fn weight_layout(i: u16, rec: &LayerRecord, taps: usize) -> Result<WeightLayout, Error> {
    let layout = WeightLayout::from_code(rec.weight_layout).ok_or(Error::BadParameter { layer: i, what: "unknown weight layout" })?;
    if layout.needs_quads() && !taps.is_multiple_of(4) {
        return Err(Error::BadParameter { layer: i, what: "OC4 weight layouts need a multiple of 4 taps per channel" });
    }
    Ok(layout)
}

fn requant<'a>(payload: &'a [u8], i: u16, rec: &LayerRecord, channels: usize, values: Values) -> Result<Requant<'a>, Error> {
    let multipliers = I32Le::new(section(payload, i, rec.multipliers, "multipliers", 4 * channels)?);
    let shifts = I32Le::new(section(payload, i, rec.shifts, "shifts", 4 * channels)?);
    let requant = Requant { multipliers, shifts, output_zp: rec.output_zp, act_min: rec.act_min, act_max: rec.act_max };
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
