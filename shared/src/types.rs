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
    /// The fast requantization the engine's plan chose for the kernel that runs this layer
    /// (`kernels::fast::plan_requant`); None until then, and a fast kernel chooses at each call.
    pub(crate) planned: Option<Option<crate::kernels::fast::Fast>>,
}

impl<'a> Requant<'a> {
    pub const fn new(multipliers: I32Le<'a>, shifts: I32Le<'a>, output_zp: i32, act_min: i8, act_max: i8) -> Self {
        Requant { multipliers, shifts, output_zp, act_min, act_max, planned: None }
    }
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
    /// A 3x3 convolution's weights in the Winograd F(2x2, 3x3) domain: per output channel `o`
    /// and input channel `i`, the 4x4 block `U = G g G^T` of its 3x3 kernel `g`, with `G`'s rows
    /// (2,0,0), (1,1,1), (1,-1,1), (0,0,2) (twice the textbook `G`, so every value is an integer:
    /// `U` is 4x the textbook transform). Stored as [`WeightLayout::Oc4PairsI16`] over 16 x
    /// `ic4` taps (`ic4`: the input channels rounded up to a quad): value `(o, i, p)` at tap
    /// `p * ic4 + i` for block position `p = 4 r + s`, so each position's taps are contiguous.
    /// 16/9 of `Oc4PairsI16`'s flash; 16 multiplies per 2x2 outputs and input channel instead of 36.
    Winograd2x2 = 3,
    /// int4 weights (values -8..=7), two per byte: groups of 4 output channels; within a group,
    /// for each octet of 8 taps, one word per channel whose byte `k` holds tap `k` in its low
    /// nibble and tap `k + 4` in its high one: `[out / 4][taps / 8][4 channels][4 bytes]`. Masked
    /// to the high nibbles (shifted there for the low ones) a word gives two SXTB16 pairs of a
    /// quad, `(t0, t2), (t1, t3)` and `(t4, t6), (t5, t7)`, each 16 times the weight; the kernels
    /// divide the (exact, 16-fold) sums by 16. Half of `Oc4Quads`' flash.
    Oc4Int4 = 4,
    /// The values of [`WeightLayout::Oc4PairsI16`] with each quad's eight words ordered by pair,
    /// then channel: `(w0, w2)` of the group's four channels, then their `(w1, w3)`. A pointwise
    /// conv's layout (1x1 kernel, stride 1): one load of two words gives two channels' weights
    /// for the same patch word, which the two-pixel kernel applies to both pixels.
    Oc4SplitI16 = 5,
}

/// [`WeightLayout::Winograd2x2`]'s `G`: twice the textbook F(2x2, 3x3) filter transform.
const WINOGRAD_G: [[i32; 3]; 4] = [[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]];

/// `U = G g G^T` of a 3x3 kernel `g` (row-major), row-major 4x4.
pub fn winograd_filter(g: &[i32; 9]) -> [i32; 16] {
    let mut u = [0i32; 16];
    for (r, gr) in WINOGRAD_G.iter().enumerate() {
        for (s, gs) in WINOGRAD_G.iter().enumerate() {
            let mut v = 0;
            for a in 0..3 {
                for b in 0..3 {
                    v += gr[a] * g[3 * a + b] * gs[b];
                }
            }
            u[4 * r + s] = v;
        }
    }
    u
}

/// Canonical OHWI 3x3 weights (`channels` x 9 x `input_channels`) into a zeroed
/// [`WeightLayout::Winograd2x2`] section `out` (of `WeightLayout::Winograd2x2.bytes(channels,
/// 9 * input_channels)` bytes).
pub fn write_winograd(canonical: &[i8], channels: usize, input_channels: usize, out: &mut [i8]) {
    let taps = 9 * input_channels;
    for o in 0..channels {
        for i in 0..input_channels {
            let g: [i32; 9] = core::array::from_fn(|k| canonical.get(o * taps + k * input_channels + i).map_or(0, |&w| w as i32));
            for (p, &u) in winograd_filter(&g).iter().enumerate() {
                let at = WeightLayout::winograd_index(o, i, p, taps);
                if let Some(b) = out.get_mut(at..at + 2) {
                    let [lo, hi] = (u as i16).to_le_bytes();
                    b[0] = lo as i8;
                    b[1] = hi as i8;
                }
            }
        }
    }
}

/// The 3x3 kernel whose [`winograd_filter`] is `u`, if there is one with int8 values (`u`'s
/// corners are 4 g, its edges 2 (sums of three), its centre the sum of all nine).
pub fn winograd_kernel(u: &[i32; 16]) -> Option<[i32; 9]> {
    let quarter = |v: i32| (v % 4 == 0).then_some(v / 4);
    let half = |v: i32| (v % 2 == 0).then_some(v / 2);
    let (g00, g02, g20, g22) = (quarter(u[0])?, quarter(u[3])?, quarter(u[12])?, quarter(u[15])?);
    let g01 = half(u[1])? - g00 - g02;
    let g21 = half(u[13])? - g20 - g22;
    let g10 = half(u[4])? - g00 - g20;
    let g12 = half(u[7])? - g02 - g22;
    let g11 = u[5] - (g00 + g01 + g02 + g10 + g12 + g20 + g21 + g22);
    let g = [g00, g01, g02, g10, g11, g12, g20, g21, g22];
    (g.iter().all(|v| (-128..=127).contains(v)) && winograd_filter(&g) == *u).then_some(g)
}

impl WeightLayout {
    pub fn from_code(code: u8) -> Option<WeightLayout> {
        match code {
            0 => Some(WeightLayout::Canonical),
            1 => Some(WeightLayout::Oc4Quads),
            2 => Some(WeightLayout::Oc4PairsI16),
            3 => Some(WeightLayout::Winograd2x2),
            4 => Some(WeightLayout::Oc4Int4),
            5 => Some(WeightLayout::Oc4SplitI16),
            _ => None,
        }
    }

    /// Taps per channel as stored: rounded up to whole quads in the OC4 layouts; for
    /// [`WeightLayout::Winograd2x2`] (`taps` = 9 x input channels) 16 positions of whole quads.
    pub fn stored_taps(self, taps: usize) -> usize {
        match self {
            WeightLayout::Canonical => taps,
            WeightLayout::Winograd2x2 => 16 * (taps / 9).div_ceil(4) * 4,
            WeightLayout::Oc4Int4 => taps.div_ceil(8) * 8,
            _ => taps.div_ceil(4) * 4,
        }
    }

    /// Bytes of a weights section for `channels` x `taps` weights in this layout.
    pub fn bytes(self, channels: usize, taps: usize) -> Option<usize> {
        let taps = self.stored_taps(taps);
        match self {
            WeightLayout::Canonical => channels.checked_mul(taps),
            WeightLayout::Oc4Quads => channels.div_ceil(4).checked_mul(4)?.checked_mul(taps),
            WeightLayout::Oc4PairsI16 | WeightLayout::Winograd2x2 | WeightLayout::Oc4SplitI16 => channels.div_ceil(4).checked_mul(8)?.checked_mul(taps),
            WeightLayout::Oc4Int4 => channels.div_ceil(4).checked_mul(2)?.checked_mul(taps),
        }
    }

    /// The range of the values a section of this layout holds.
    pub fn value_range(self) -> core::ops::RangeInclusive<i32> {
        match self {
            WeightLayout::Oc4Int4 => -8..=7,
            _ => -128..=127,
        }
    }

    /// Store weight `(channel, tap)` into a section of this layout (an OC4 or canonical one: a
    /// [`WeightLayout::Winograd2x2`] section holds transforms, see [`WeightLayout::winograd_index`]).
    pub fn put(self, weights: &mut [i8], channel: usize, tap: usize, taps: usize, value: i8) {
        let at = self.index(channel, tap, taps);
        if self == WeightLayout::Oc4Int4 {
            let shift = Self::nibble_shift(tap);
            let byte = weights[at] as u8 & !(0xF << shift) | ((value as u8 & 0xF) << shift);
            weights[at] = byte as i8;
        } else if matches!(self, WeightLayout::Oc4PairsI16 | WeightLayout::Oc4SplitI16) {
            let [lo, hi] = (value as i16).to_le_bytes();
            weights[at] = lo as i8;
            weights[at + 1] = hi as i8;
        } else {
            weights[at] = value;
        }
    }

    /// Whether this is one of the OC4 layouts the DSP kernels read.
    pub fn is_oc4(self) -> bool {
        matches!(self, WeightLayout::Oc4Quads | WeightLayout::Oc4PairsI16 | WeightLayout::Oc4Int4)
    }

    /// Where tap `tap`'s nibble sits in its byte of an [`WeightLayout::Oc4Int4`] section.
    #[inline(always)]
    fn nibble_shift(tap: usize) -> u32 {
        if tap % 8 >= 4 {
            4
        } else {
            0
        }
    }

    /// The i16 stored at byte `at` of an i16 section (0 past its end).
    #[inline(always)]
    pub fn weight_value(self, weights: &[i8], at: usize) -> i32 {
        match weights.get(at..).and_then(|w| w.first_chunk::<2>()) {
            Some(&[lo, hi]) => i16::from_le_bytes([lo as u8, hi as u8]) as i32,
            None => 0,
        }
    }

    /// Byte index of Winograd block value `(channel, input channel, position)` in a
    /// [`WeightLayout::Winograd2x2`] section of `taps` (= 9 x input channels) taps per channel.
    #[inline(always)]
    pub fn winograd_index(channel: usize, input_channel: usize, position: usize, taps: usize) -> usize {
        let ic4 = (taps / 9).div_ceil(4) * 4;
        WeightLayout::Oc4PairsI16.index(channel, position * ic4 + input_channel, 16 * ic4)
    }

    /// Weight `(channel, tap)` of a section in this layout (0 for Winograd weights in builds
    /// without the `winograd-reference` feature). Out of line: the reference kernels call it per
    /// MAC, and inlined it would multiply their code by the number of layouts: on the device.
    /// On the host, where the reference engine is the oracle over whole test sets, the call
    /// cost twice the MAC it serves.
    #[cfg_attr(target_os = "none", inline(never))]
    #[cfg_attr(not(target_os = "none"), inline)]
    pub fn weight(self, weights: &[i8], channel: usize, tap: usize, taps: usize) -> i32 {
        let i16_at = |at: usize| self.weight_value(weights, at);
        match self {
            WeightLayout::Oc4PairsI16 | WeightLayout::Oc4SplitI16 => i16_at(self.index(channel, tap, taps)),
            // The kernel value from its Winograd block (tap = (ky * 3 + kx) * ic + i); builds
            // without the winograd-reference feature (the device) never read them one by one.
            #[cfg(not(feature = "winograd-reference"))]
            WeightLayout::Winograd2x2 => 0,
            #[cfg(feature = "winograd-reference")]
            WeightLayout::Winograd2x2 => {
                let ic = (taps / 9).max(1);
                let (k, i) = (tap / ic, tap % ic);
                let u: [i32; 16] = core::array::from_fn(|p| i16_at(Self::winograd_index(channel, i, p, taps)));
                winograd_kernel(&u).map_or(0, |g| g.get(k).copied().unwrap_or(0))
            }
            WeightLayout::Oc4Int4 => {
                let byte = weights.get(self.index(channel, tap, taps)).map_or(0, |&w| w as u8);
                (((byte << (4 - Self::nibble_shift(tap))) as i8) >> 4) as i32
            }
            _ => weights.get(self.index(channel, tap, taps)).map_or(0, |&w| w as i32),
        }
    }

    /// Byte index of weight `(channel, tap)` in a section of this layout (of its low byte for i16).
    #[inline(always)]
    pub fn index(self, channel: usize, tap: usize, taps: usize) -> usize {
        let taps = self.stored_taps(taps);
        match self {
            WeightLayout::Canonical => channel * taps + tap,
            WeightLayout::Oc4Quads => (((channel / 4) * (taps / 4) + tap / 4) * 4 + channel % 4) * 4 + tap % 4,
            WeightLayout::Oc4Int4 => (((channel / 4) * (taps / 8) + tap / 8) * 4 + channel % 4) * 4 + tap % 4,
            WeightLayout::Oc4PairsI16 | WeightLayout::Winograd2x2 => {
                let j = tap % 4;
                ((((channel / 4) * (taps / 4) + tap / 4) * 4 + channel % 4) * 2 + j % 2) * 4 + (j / 2) * 2
            }
            WeightLayout::Oc4SplitI16 => {
                let j = tap % 4;
                ((((channel / 4) * (taps / 4) + tap / 4) * 2 + j % 2) * 4 + channel % 4) * 4 + (j / 2) * 2
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every int4 value at every position of an octet and channel of a group reads back as
    /// written, and writing one nibble leaves its neighbours alone.
    #[test]
    fn int4_weights_read_back_as_written() {
        let (channels, taps) = (6, 13);
        let layout = WeightLayout::Oc4Int4;
        let mut section = [0i8; 64];
        assert_eq!(layout.bytes(channels, taps), Some(64));
        // Two groups of 4 channels, 16 stored taps, half a byte each.
        let value = |c: usize, t: usize| ((c * 7 + t * 3) % 16) as i32 - 8;
        for c in 0..channels {
            for t in 0..taps {
                layout.put(&mut section, c, t, taps, value(c, t) as i8);
            }
        }
        for c in 0..channels {
            for t in 0..taps {
                assert_eq!(layout.weight(&section, c, t, taps), value(c, t), "channel {c} tap {t}");
            }
        }
        // Byte k of channel c's first word: tap k low, tap k + 4 high.
        let at = layout.index(1, 2, taps);
        assert_eq!(at, 4 + 2);
        assert_eq!(section[at] as u8, (value(1, 2) as u8 & 0xF) | ((value(1, 6) as u8 & 0xF) << 4));
    }
}
