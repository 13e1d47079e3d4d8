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
    let mut out = output.iter_mut();
    for oy in 0..oh {
        let (ky0, ky1, y0) = window(oy, sh, pad_top, kh, ih);
        for ox in 0..ow {
            let (kx0, kx1, x0) = window(ox, sw, pad_left, kw, iw);
            for c in 0..oc {
                let mut acc = 0i32;
                for ky in ky0..ky1 {
                    let iy = (y0 + ky as isize) as usize;
                    for kx in kx0..kx1 {
                        let ix = (x0 + kx as isize) as usize;
                        let pixel = sub(input, (iy * iw + ix) * ic, ic);
                        for (i, &x) in pixel.iter().enumerate() {
                            let tap = (ky * kw + kx) * ic + i;
                            // Winograd sums wrap, as the Winograd kernel's do (the plan checks
                            // its accumulator bound; a crafted blob must not panic here).
                            acc = if winograd {
                                acc.wrapping_add(decoded_weight(scratch, c, tap, taps).wrapping_mul(x as i32 - p.input_zp))
                            } else {
                                acc + p.layout.weight(p.weights, c, tap, taps) * (x as i32 - p.input_zp)
                            };
                        }
                    }
                }
                if let Some(o) = out.next() {
                    *o = p.requant.apply(acc + p.bias.get(c), c);
                }
            }
        }
    }
    Ok(())
}
