//! Small value types shared by the format, the kernels and the engine.

use crate::Error;

/// `clamp` without its panic when `lo > hi` (the model validator rejects such bounds; the
/// kernels must not be able to panic even so): `max(lo)` then `min(hi)`, as TFLM computes.
pub(crate) trait Bounded: Ord + Sized {
    #[inline(always)]
    fn bounded(self, lo: Self, hi: Self) -> Self {
        self.max(lo).min(hi)
    }
}
impl Bounded for i32 {}
impl Bounded for i8 {}

/// `s[start..start + len]`, or empty when that is out of range. The kernels check every
/// length up front, so the empty case never happens for a validated model; it keeps each
/// bound check a branch instead of a panic.
#[inline(always)]
pub(crate) fn sub<T>(s: &[T], start: usize, len: usize) -> &[T] {
    s.get(start..start.wrapping_add(len)).unwrap_or(&[])
}

/// Mutable counterpart of [`sub`].
#[inline(always)]
pub(crate) fn sub_mut<T>(s: &mut [T], start: usize, len: usize) -> &mut [T] {
    s.get_mut(start..start.wrapping_add(len)).unwrap_or(&mut [])
}

/// An NHWC tensor shape with batch 1. Vectors (fully-connected) are `1 x 1 x C`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Shape {
    pub h: u16,
    pub w: u16,
    pub c: u16,
}

impl Shape {
    pub const fn new(h: u16, w: u16, c: u16) -> Self {
        Shape { h, w, c }
    }

    /// Number of elements. Cannot overflow on 64-bit hosts; checked for 32-bit targets.
    pub fn len(&self) -> Result<usize, Error> {
        (self.h as usize)
            .checked_mul(self.w as usize)
            .and_then(|hw| hw.checked_mul(self.c as usize))
            .ok_or(Error::SizeOverflow)
    }

    pub fn is_empty(&self) -> bool {
        self.h == 0 || self.w == 0 || self.c == 0
    }
}

/// Spatial padding of convolutions and pools, as in TFLite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Padding {
    Valid = 0,
    Same = 1,
}

impl Padding {
    pub fn from_code(code: u8) -> Option<Padding> {
        match code {
            0 => Some(Padding::Valid),
            1 => Some(Padding::Same),
            _ => None,
        }
    }

    /// Output size of a window of `kernel` sliding by `stride` over `input` (TFLite's rule).
    pub fn output_size(self, input: usize, kernel: usize, stride: usize) -> Option<usize> {
        if kernel == 0 || stride == 0 {
            return None;
        }
        match self {
            Padding::Valid => input.checked_sub(kernel).map(|d| d / stride + 1),
            Padding::Same => Some(input.div_ceil(stride)),
        }
    }

    /// Leading (top or left) padding, TFLite's `ComputePadding`: half of the total, rounded down.
    pub fn leading(self, input: usize, kernel: usize, stride: usize, output: usize) -> usize {
        match self {
            Padding::Valid => 0,
            Padding::Same => {
                let needed = output.saturating_sub(1).saturating_mul(stride).saturating_add(kernel);
                needed.saturating_sub(input) / 2
            }
        }
    }
}

/// A little-endian array of `i32` inside a byte slice: the model stays zero-copy with no
/// alignment requirement on the blob.
#[derive(Clone, Copy, Debug, Default)]
pub struct I32Le<'a>(&'a [u8]);

impl<'a> I32Le<'a> {
    /// `bytes.len()` must be a multiple of 4 (the parser guarantees it).
    pub fn new(bytes: &'a [u8]) -> Self {
        I32Le(bytes)
    }

    pub fn len(&self) -> usize {
        self.0.len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i`, or 0 when out of range (never panics; callers check lengths up front).
    #[inline(always)]
    pub fn get(&self, i: usize) -> i32 {
        self.0.as_chunks::<4>().0.get(i).map_or(0, |b| i32::from_le_bytes(*b))
    }

    pub fn iter(&self) -> impl Iterator<Item = i32> + 'a {
        self.0.as_chunks::<4>().0.iter().map(|b| i32::from_le_bytes(*b))
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// Per-output-channel requantization: TFLite `QuantizeMultiplier` results.
#[derive(Clone, Copy, Debug, Default)]
pub struct Requant<'a> {
    pub multipliers: I32Le<'a>,
    pub shifts: I32Le<'a>,
    pub output_zp: i32,
    pub act_min: i8,
    pub act_max: i8,
}

impl Requant<'_> {
    /// Out of line: one copy serves every kernel (code size), at a call per output.
    #[inline(never)]
    pub fn apply(&self, acc: i32, channel: usize) -> i8 {
        crate::fixedpoint::requantize(
            acc,
            self.multipliers.get(channel),
            self.shifts.get(channel),
            self.output_zp,
            self.act_min,
            self.act_max,
        )
    }
}

/// View an int8 byte buffer as `i8` (same size and alignment: always valid).
pub fn as_i8(bytes: &[u8]) -> &[i8] {
    // SAFETY: u8 and i8 have identical size, alignment and validity.
    unsafe { core::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) }
}

/// Mutable counterpart of [`as_i8`].
pub fn as_i8_mut(bytes: &mut [u8]) -> &mut [i8] {
    // SAFETY: u8 and i8 have identical size, alignment and validity.
    unsafe { core::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<i8>(), bytes.len()) }
}

/// Check a buffer's length against what a kernel expects.
pub(crate) fn expect_len(found: usize, expected: usize) -> Result<(), Error> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::BufferSize { expected, found })
    }
}

/// View an `i8` buffer as bytes (same size and alignment: always valid).
pub fn as_u8(values: &[i8]) -> &[u8] {
    // SAFETY: u8 and i8 have identical size, alignment and validity.
    unsafe { core::slice::from_raw_parts(values.as_ptr().cast::<u8>(), values.len()) }
}

/// Order of a conv or fully-connected weights section. Both hold the same int8 values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WeightLayout {
    /// `[out][taps]`: OHWI for conv, `[out, in]` for fully connected (TFLite's order).
    Canonical = 0,
    /// Groups of 4 output channels; within a group, for each quad of 4 taps, the 4 channels'
    /// 4 bytes one after the other: `[out / 4][taps / 4][4 channels][4 taps]`. The last group is
    /// padded with zero channels, the last quad with zero taps. One word load per channel and
    /// quad feeds two SMLADs.
    Oc4Quads = 1,
    /// The [`WeightLayout::Oc4Quads`] order pre-widened to i16 and paired for SMLAD: per group,
    /// quad and channel two words, `(w0, w2)` and `(w1, w3)`. Twice the flash, no unpacking.
    Oc4PairsI16 = 2,
}

impl WeightLayout {
    pub fn from_code(code: u8) -> Option<WeightLayout> {
        match code {
            0 => Some(WeightLayout::Canonical),
            1 => Some(WeightLayout::Oc4Quads),
            2 => Some(WeightLayout::Oc4PairsI16),
            _ => None,
        }
    }

    /// Taps per channel as stored: rounded up to whole quads in the OC4 layouts.
    pub fn stored_taps(self, taps: usize) -> usize {
        match self {
            WeightLayout::Canonical => taps,
            _ => taps.div_ceil(4) * 4,
        }
    }

    /// Bytes of a weights section for `channels` x `taps` weights in this layout.
    pub fn bytes(self, channels: usize, taps: usize) -> Option<usize> {
        let taps = self.stored_taps(taps);
        match self {
            WeightLayout::Canonical => channels.checked_mul(taps),
            WeightLayout::Oc4Quads => channels.div_ceil(4).checked_mul(4)?.checked_mul(taps),
            WeightLayout::Oc4PairsI16 => channels.div_ceil(4).checked_mul(8)?.checked_mul(taps),
        }
    }

    /// Store weight `(channel, tap)` into a section of this layout.
    pub fn put(self, weights: &mut [i8], channel: usize, tap: usize, taps: usize, value: i8) {
        let at = self.index(channel, tap, taps);
        if self == WeightLayout::Oc4PairsI16 {
            let [lo, hi] = (value as i16).to_le_bytes();
            weights[at] = lo as i8;
            weights[at + 1] = hi as i8;
        } else {
            weights[at] = value;
        }
    }

    /// Whether this is one of the OC4 layouts the DSP kernels read.
    pub fn is_oc4(self) -> bool {
        self != WeightLayout::Canonical
    }

    /// Weight `(channel, tap)` of a section in this layout. Out of line: the reference kernels
    /// call it per MAC, and inlined it would multiply their code by the number of layouts.
    #[inline(never)]
    pub fn weight(self, weights: &[i8], channel: usize, tap: usize, taps: usize) -> i32 {
        let at = self.index(channel, tap, taps);
        match self {
            WeightLayout::Oc4PairsI16 => match weights.get(at..).and_then(|w| w.first_chunk::<2>()) {
                Some(&[lo, hi]) => i16::from_le_bytes([lo as u8, hi as u8]) as i32,
                None => 0,
            },
            _ => weights.get(at).map_or(0, |&w| w as i32),
        }
    }

    /// Byte index of weight `(channel, tap)` in a section of this layout (of its low byte for i16).
    #[inline(always)]
    pub fn index(self, channel: usize, tap: usize, taps: usize) -> usize {
        let taps = self.stored_taps(taps);
        match self {
            WeightLayout::Canonical => channel * taps + tap,
            WeightLayout::Oc4Quads => (((channel / 4) * (taps / 4) + tap / 4) * 4 + channel % 4) * 4 + tap % 4,
            WeightLayout::Oc4PairsI16 => {
                let j = tap % 4;
                ((((channel / 4) * (taps / 4) + tap / 4) * 4 + channel % 4) * 2 + j % 2) * 4 + (j / 2) * 2
            }
        }
    }
}
