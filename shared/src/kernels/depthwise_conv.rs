//! Depthwise convolution, int8 activations, per-output-channel int8 weights, int32 bias
//! (TFLM's `reference_integer_ops::DepthwiseConvPerChannel`). Output channel `oc = ic * m + j`
//! reads input channel `ic` for depth multiplier `m`.

use super::conv2d::{convolve, Geometry, Taps};
use crate::types::{expect_len, I32Le, Padding, Requant, Shape};
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
    let geometry = Geometry { input: (ih, iw, ic), output: (oh, ow, oc), kernel: (kh, kw), stride: (sh, sw), pad: (pad_top, pad_left), input_zp: p.input_zp };
    convolve(&geometry, 1, &Taps::Depthwise(p.weights), input, output, &p.bias, &p.requant);
    Ok(())
}
