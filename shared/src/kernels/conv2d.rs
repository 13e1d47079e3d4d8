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

/// The accumulator of output channel `c` at one pixel (its kernel windows `ky0..ky1` from `y0`,
/// `kx0..kx1` from `x0`) for Winograd weights: each 3x3 kernel read back from its block once,
/// for its nine taps.
#[cfg(feature = "winograd-reference")]
#[inline(never)]
fn winograd_reference_acc(p: &Conv2d, input: &[i8], c: usize, (ky0, ky1, y0): (usize, usize, isize), (kx0, kx1, x0): (usize, usize, isize)) -> i32 {
    let (iw, ic) = (p.input.w as usize, p.input.c as usize);
    let taps = 9 * ic;
    let mut acc = 0i32;
    for i in 0..ic {
        let u: [i32; 16] = core::array::from_fn(|q| p.layout.weight_value(p.weights, WeightLayout::winograd_index(c, i, q, taps)));
        let g = crate::types::winograd_kernel(&u).unwrap_or([0; 9]);
        for ky in ky0..ky1 {
            for kx in kx0..kx1 {
                let (iy, ix) = ((y0 + ky as isize) as usize, (x0 + kx as isize) as usize);
                let x = input.get((iy * iw + ix) * ic + i).map_or(0, |&x| x as i32);
                acc = acc.wrapping_add(g.get(ky * 3 + kx).copied().unwrap_or(0) * (x - p.input_zp));
            }
        }
    }
    acc
}

pub fn conv2d_s8_scratch_bytes(_p: &Conv2d) -> usize {
    0
}

/// `output[oy, ox, oc] = requant(bias[oc] + sum w[oc, ky, kx, ic] * (input[iy, ix, ic] - input_zp))`.
pub fn conv2d_s8(p: &Conv2d, input: &[i8], output: &mut [i8], _scratch: &mut [u8]) -> Result<(), Error> {
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
    let mut out = output.iter_mut();
    for oy in 0..oh {
        let (ky0, ky1, y0) = window(oy, sh, pad_top, kh, ih);
        for ox in 0..ow {
            let (kx0, kx1, x0) = window(ox, sw, pad_left, kw, iw);
            for c in 0..oc {
                let mut acc = 0i32;
                #[cfg(feature = "winograd-reference")]
                if winograd {
                    acc = winograd_reference_acc(p, input, c, (ky0, ky1, y0), (kx0, kx1, x0));
                }
                for ky in (ky0..ky1).filter(|_| !winograd) {
                    let iy = (y0 + ky as isize) as usize;
                    for kx in kx0..kx1 {
                        let ix = (x0 + kx as isize) as usize;
                        let pixel = sub(input, (iy * iw + ix) * ic, ic);
                        for (i, &x) in pixel.iter().enumerate() {
                            let w = p.layout.weight(p.weights, c, (ky * kw + kx) * ic + i, taps);
                            acc += w * (x as i32 - p.input_zp);
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
