//! Convolution, int8 activations, per-output-channel int8 weights (OHWI), int32 bias.

use super::window;
use crate::types::{expect_len, sub, I32Le, Padding, Requant, Shape, WeightLayout};
use crate::Error;

#[derive(Clone, Copy, Debug)]
pub struct Conv2d<'a> {
    pub input: Shape,
    pub output: Shape,
    pub kernel_h: u8,
    pub kernel_w: u8,
    pub stride_h: u8,
    pub stride_w: u8,
    pub padding: Padding,
    pub input_zp: i32,
    /// Symmetric (zero point 0), `[output.c, kernel_h, kernel_w, input.c]` in `layout`'s order.
    pub weights: &'a [i8],
    pub layout: WeightLayout,
    pub bias: I32Le<'a>,
    pub requant: Requant<'a>,
}

/// Winograd weights read back through their exact inverse transform, once per call: every
/// output channel's 3x3 kernels into `scratch` as little-endian i32s in canonical order
/// (`[out][ky][kx][in]`), so the main loop reads them like any other layout's (decoding per
/// output pixel costs 16 loads and a transform per 9 MACs).
#[cfg(feature = "winograd-reference")]
fn decode_winograd(p: &Conv2d, scratch: &mut [u8]) -> Result<(), Error> {
    let ic = p.input.c as usize;
    let taps = 9 * ic;
    let needed = conv2d_s8_scratch_bytes(p);
    let found = scratch.len();
    let decoded = scratch.get_mut(..needed).ok_or(Error::BufferSize { expected: needed, found })?;
    for (c, channel) in decoded.chunks_exact_mut(taps * 4).enumerate() {
        for i in 0..ic {
            let u: [i32; 16] = core::array::from_fn(|q| p.layout.weight_value(p.weights, WeightLayout::winograd_index(c, i, q, taps)));
            let g = crate::types::winograd_kernel(&u).unwrap_or([0; 9]);
            for (k, w) in g.iter().enumerate() {
                if let Some(slot) = channel.get_mut((k * ic + i) * 4..(k * ic + i + 1) * 4) {
                    slot.copy_from_slice(&w.to_le_bytes());
                }
            }
        }
    }
    Ok(())
}

/// Decoded weight `tap` of channel `c` (see `decode_winograd`); 0 outside the scratch.
#[cfg(feature = "winograd-reference")]
#[inline(always)]
fn decoded_weight(scratch: &[u8], c: usize, tap: usize, taps: usize) -> i32 {
    let at = (c * taps + tap) * 4;
    scratch.get(at..at + 4).map_or(0, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// None, except with Winograd weights (decoded once per call, see `decode_winograd`), which
/// only the host's reference engine reads here: the optimized engine runs them with the
/// Winograd kernel, and device builds refuse them in this one.
pub fn conv2d_s8_scratch_bytes(p: &Conv2d) -> usize {
    if cfg!(feature = "winograd-reference") && p.layout == WeightLayout::Winograd2x2 {
        p.output.c as usize * 9 * p.input.c as usize * 4
    } else {
        0
    }
}

/// `output[oy, ox, oc] = requant(bias[oc] + sum w[oc, ky, kx, ic] * (input[iy, ix, ic] - input_zp))`.
pub fn conv2d_s8(p: &Conv2d, input: &[i8], output: &mut [i8], scratch: &mut [u8]) -> Result<(), Error> {
    let (ih, iw, ic) = (p.input.h as usize, p.input.w as usize, p.input.c as usize);
    let (oh, ow, oc) = (p.output.h as usize, p.output.w as usize, p.output.c as usize);
    let (kh, kw) = (p.kernel_h as usize, p.kernel_w as usize);
    let (sh, sw) = (p.stride_h as usize, p.stride_w as usize);
    expect_len(input.len(), p.input.len()?)?;
    expect_len(output.len(), p.output.len()?)?;
    let taps = kh * kw * ic;
    expect_len(p.weights.len(), p.layout.bytes(oc, taps).unwrap_or(usize::MAX))?;
    expect_len(p.bias.len(), oc)?;
    let pad_top = p.padding.leading(ih, kh, sh, oh);
    let pad_left = p.padding.leading(iw, kw, sw, ow);

    let winograd = p.layout == WeightLayout::Winograd2x2;
    #[cfg(not(feature = "winograd-reference"))]
    if winograd {
        return Err(Error::BadParameter { layer: 0, what: "Winograd weights outside the Winograd kernel (a build without the winograd-reference feature)" });
    }
    #[cfg(feature = "winograd-reference")]
    if winograd {
        decode_winograd(p, scratch)?;
    }
    #[cfg(feature = "winograd-reference")]
    let weights = if winograd { Taps::Decoded(scratch) } else { Taps::Stored(p.weights, p.layout) };
    #[cfg(not(feature = "winograd-reference"))]
    let (weights, _) = (Taps::Stored(p.weights, p.layout), scratch);
    let geometry = Geometry { input: (ih, iw, ic), output: (oh, ow, oc), kernel: (kh, kw), stride: (sh, sw), pad: (pad_top, pad_left), input_zp: p.input_zp };
    convolve(&geometry, ic, &weights, input, output, &p.bias, &p.requant);
    Ok(())
}

/// The output geometry both reference convolutions share.
pub(crate) struct Geometry {
    /// Height, width and channels of the input and of the output.
    pub input: (usize, usize, usize),
    pub output: (usize, usize, usize),
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    /// Rows above and columns left of the input that the windows read as padding.
    pub pad: (usize, usize),
    pub input_zp: i32,
}

/// Where [`convolve`] reads weight `(channel, tap)` of a window of `group` taps per position.
pub(crate) enum Taps<'a> {
    /// A conv's, in its layout.
    Stored(&'a [i8], WeightLayout),
    /// A conv's Winograd weights decoded by `decode_winograd`.
    #[cfg(feature = "winograd-reference")]
    Decoded(&'a [u8]),
    /// A depthwise conv's, `[kernel_h, kernel_w, channels]`.
    Depthwise(&'a [i8]),
}

impl Taps<'_> {
    /// Weight `tap` of output channel `c` (of `channels`), windows of `taps`. Out of line, so
    /// that [`convolve`] keeps one loop, not one per kind of weights (code size).
    #[inline(never)]
    fn get(&self, c: usize, tap: usize, taps: usize, channels: usize) -> i32 {
        match self {
            Taps::Stored(w, layout) => layout.weight(w, c, tap, taps),
            #[cfg(feature = "winograd-reference")]
            Taps::Decoded(d) => decoded_weight(d, c, tap, taps),
            Taps::Depthwise(w) => w.get(tap * channels + c).map_or(0, |&w| w as i32),
        }
    }
}

/// The reference convolution of conv and fully connected (`group` = the input's channels, each
/// output channel reads all of them; fully connected as a 1x1 conv of a 1x1 map) and depthwise conv (`group` 1: output channel `c` reads input channel
/// `c / m`, `m` = output over input channels): per output value the wide sum over its window
/// (sums wrap, as the Winograd kernel's do: the plan bounds every accumulator, and a crafted
/// blob must not panic here), then the requantization. One loop for both ops (code size).
#[inline(never)]
pub(crate) fn convolve(g: &Geometry, group: usize, weights: &Taps, input: &[i8], output: &mut [i8], bias: &I32Le, requant: &Requant) {
    let ((ih, iw, ic), (oh, ow, oc)) = (g.input, g.output);
    let ((kh, kw), (sh, sw)) = (g.kernel, g.stride);
    let (taps, per_input) = (kh * kw * group, (oc / ic.max(1)).max(1));
    let mut out = output.iter_mut();
    for oy in 0..oh {
        let (ky0, ky1, y0) = window(oy, sh, g.pad.0, kh, ih);
        for ox in 0..ow {
            let (kx0, kx1, x0) = window(ox, sw, g.pad.1, kw, iw);
            for c in 0..oc {
                let first = if group == ic { 0 } else { c / per_input };
                let mut acc = 0i32;
                for ky in ky0..ky1 {
                    let iy = (y0 + ky as isize) as usize;
                    for kx in kx0..kx1 {
                        let ix = (x0 + kx as isize) as usize;
                        let pixel = sub(input, (iy * iw + ix) * ic + first, group);
                        for (i, &x) in pixel.iter().enumerate() {
                            let tap = (ky * kw + kx) * group + i;
                            acc = acc.wrapping_add(weights.get(c, tap, taps, oc).wrapping_mul(x as i32 - g.input_zp));
                        }
                    }
                }
                if let Some(o) = out.next() {
                    *o = requant.apply(acc.wrapping_add(bias.get(c)), c);
                }
            }
        }
    }
}
