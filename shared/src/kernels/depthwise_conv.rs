//! Depthwise convolution, int8 activations, per-output-channel int8 weights, int32 bias
//! (TFLM's `reference_integer_ops::DepthwiseConvPerChannel`). Output channel `oc = ic * m + j`
//! reads input channel `ic` for depth multiplier `m`.

use super::window;
use crate::types::{expect_len, sub_mut, I32Le, Padding, Requant, Shape};
use crate::Error;

#[derive(Clone, Copy, Debug)]
pub struct DepthwiseConv2d<'a> {
    pub input: Shape,
    pub output: Shape,
    pub kernel_h: u8,
    pub kernel_w: u8,
    pub stride_h: u8,
    pub stride_w: u8,
    pub padding: Padding,
    /// Output channels per input channel.
    pub depth_multiplier: u16,
    pub input_zp: i32,
    /// Symmetric (zero point 0), TFLite's `[1, kernel_h, kernel_w, output.c]`.
    pub weights: &'a [i8],
    pub bias: I32Le<'a>,
    pub requant: Requant<'a>,
}

pub fn depthwise_conv2d_s8_scratch_bytes(_p: &DepthwiseConv2d) -> usize {
    0
}

/// `output[oy, ox, oc] = requant(bias[oc] + sum w[ky, kx, oc] * (input[iy, ix, oc / m] - input_zp))`.
pub fn depthwise_conv2d_s8(p: &DepthwiseConv2d, input: &[i8], output: &mut [i8], _scratch: &mut [u8]) -> Result<(), Error> {
    let (ih, iw, ic) = (p.input.h as usize, p.input.w as usize, p.input.c as usize);
    let (oh, ow, oc) = (p.output.h as usize, p.output.w as usize, p.output.c as usize);
    let (kh, kw) = (p.kernel_h as usize, p.kernel_w as usize);
    let (sh, sw) = (p.stride_h as usize, p.stride_w as usize);
    let m = p.depth_multiplier as usize;
    expect_len(input.len(), p.input.len()?)?;
    expect_len(output.len(), p.output.len()?)?;
    expect_len(oc, ic.checked_mul(m).ok_or(Error::SizeOverflow)?)?;
    expect_len(p.weights.len(), kh * kw * oc)?;
    expect_len(p.bias.len(), oc)?;
    let pad_top = p.padding.leading(ih, kh, sh, oh);
    let pad_left = p.padding.leading(iw, kw, sw, ow);
    for oy in 0..oh {
        let (ky0, ky1, y0) = window(oy, sh, pad_top, kh, ih);
        for ox in 0..ow {
            let (kx0, kx1, x0) = window(ox, sw, pad_left, kw, iw);
            let out = sub_mut(output, (oy * ow + ox) * oc, oc);
            for (c, o) in out.iter_mut().enumerate() {
                let mut acc = 0i32;
                for ky in ky0..ky1 {
                    let iy = (y0 + ky as isize) as usize;
                    for kx in kx0..kx1 {
                        let ix = (x0 + kx as isize) as usize;
                        let x = input.get((iy * iw + ix) * ic + c / m.max(1)).map_or(0, |&x| x as i32 - p.input_zp);
                        acc += p.weights.get((ky * kw + kx) * oc + c).map_or(0, |&w| w as i32) * x;
                    }
                }
                *o = p.requant.apply(acc + p.bias.get(c), c);
            }
        }
    }
    Ok(())
}
