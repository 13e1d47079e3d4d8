//! Reference int8 kernels, NHWC, TensorFlow Lite Micro arithmetic.
//!
//! One kernel per operation and data type, CMSIS-NN style: each has a `*_scratch_bytes`
//! function and takes all memory from the caller. None allocates; none panics: buffer lengths
//! are checked up front and reported as [`crate::Error::BufferSize`].

pub mod add;
pub mod argmax;
pub mod avg_pool;
pub mod conv2d;
pub mod depthwise_conv;
pub mod fast;
pub mod fully_connected;
pub mod max_pool;
pub mod mean;
pub mod pad;
pub mod softmax;

pub use add::{add_s8, add_s8_scratch_bytes, Add};
pub use depthwise_conv::{depthwise_conv2d_s8, depthwise_conv2d_s8_scratch_bytes, DepthwiseConv2d};
pub use mean::{mean_s8, mean_s8_scratch_bytes, Mean};
pub use pad::{pad_s8, pad_s8_scratch_bytes, Pad};

pub use argmax::argmax_s8;
pub use avg_pool::{avg_pool_s8, avg_pool_s8_scratch_bytes};
pub use conv2d::{conv2d_s8, conv2d_s8_scratch_bytes, Conv2d};
pub use fully_connected::{fully_connected_s8, fully_connected_s8_scratch_bytes, FullyConnected};
pub use max_pool::{max_pool_s8, max_pool_s8_scratch_bytes};
pub use softmax::{softmax_s8, softmax_s8_scratch_bytes, Softmax};

use crate::dsp::{fill_words, sxtab16, sxtab16_ror8};
use crate::types::{expect_len, sub, sub_mut, Bounded, Padding, Shape};
use crate::Error;

/// Geometry shared by max- and average-pooling.
#[derive(Clone, Copy, Debug)]
pub struct Pool {
    pub input: Shape,
    pub output: Shape,
    pub kernel_h: u8,
    pub kernel_w: u8,
    pub stride_h: u8,
    pub stride_w: u8,
    pub padding: Padding,
    pub act_min: i8,
    pub act_max: i8,
}

/// The kernel taps of a window that fall inside the input: `(k_start, k_end, origin)`, where tap
/// `k` in `k_start..k_end` reads input index `origin + k` (always in range). TFLite skips padded
/// positions rather than reading a padding value.
#[inline(always)]
pub(crate) fn window(o: usize, stride: usize, pad: usize, kernel: usize, input: usize) -> (usize, usize, isize) {
    let origin = (o * stride) as isize - pad as isize;
    let k_start = (-origin).max(0) as usize;
    let k_end = ((input as isize - origin).max(0) as usize).min(kernel);
    (k_start.min(k_end), k_end, origin)
}

/// Channels whose window sums or maxima [`pool_s8`] keeps at a time.
const POOL_CHANNELS: usize = 32;

/// Max- or average-pooling (`average`), one loop for both: per output pixel and group of up to
/// [`POOL_CHANNELS`] channels, the in-bounds taps folded pixel by pixel over contiguous channels,
/// then the maximum, or the mean rounded half away from zero (TFLite), clamped to the activation.
/// Averages of whole channel quads over at most 256 taps sum four channels per two SXTAB16
/// (16-bit lanes: 256 x 128 fits).
#[inline(never)]
pub(crate) fn pool_s8(p: &Pool, input: &[i8], output: &mut [i8], average: bool) -> Result<(), Error> {
    let (ih, iw, c) = (p.input.h as usize, p.input.w as usize, p.input.c as usize);
    let (oh, ow) = (p.output.h as usize, p.output.w as usize);
    let (kh, kw, sh, sw) = (p.kernel_h as usize, p.kernel_w as usize, p.stride_h as usize, p.stride_w as usize);
    expect_len(input.len(), p.input.len()?)?;
    expect_len(output.len(), p.output.len()?)?;
    let pad_top = p.padding.leading(ih, kh, sh, oh);
    let pad_left = p.padding.leading(iw, kw, sw, ow);
    // Filled per group before use (zeroed arrays and slice fills are memset calls: see
    // `fill_words`).
    let mut acc = core::mem::MaybeUninit::<[i32; POOL_CHANNELS]>::uninit();
    let mut lanes = core::mem::MaybeUninit::<[[u32; 2]; POOL_CHANNELS / 4]>::uninit();
    for oy in 0..oh {
        let (ky0, ky1, y0) = window(oy, sh, pad_top, kh, ih);
        for ox in 0..ow {
            let (kx0, kx1, x0) = window(ox, sw, pad_left, kw, iw);
            let count = ((ky1 - ky0) * (kx1 - kx0)) as i32;
            if average && count <= 0 {
                return Err(Error::BadParameter { layer: 0, what: "pooling window entirely in padding" });
            }
            // At least 1 (which the compiler sees: no division check left to panic).
            let taps = count.max(1);
            for first in (0..c).step_by(POOL_CHANNELS) {
                let n = (c - first).min(POOL_CHANNELS);
                // SAFETY: the words of `acc` and `lanes`, written here before any is read.
                let (acc, lanes) = unsafe {
                    let words = core::slice::from_raw_parts_mut(acc.as_mut_ptr() as *mut u32, n.min(POOL_CHANNELS));
                    fill_words(words, if average { 0 } else { i8::MIN as i32 as u32 });
                    let lane_words = core::slice::from_raw_parts_mut(lanes.as_mut_ptr() as *mut u32, POOL_CHANNELS / 2);
                    fill_words(lane_words, 0);
                    (&mut *(words as *mut [u32] as *mut [i32]), &mut *lanes.as_mut_ptr())
                };
                // Per quad the lane sums of channels (0, 2) and (1, 3), where they fit.
                let lanes_fit = average && n % 4 == 0 && taps <= 256;
                for ky in ky0..ky1 {
                    let iy = (y0 + ky as isize) as usize;
                    for kx in kx0..kx1 {
                        let ix = (x0 + kx as isize) as usize;
                        let pixel = sub(input, (iy * iw + ix) * c + first, n);
                        if lanes_fit {
                            for (l, q) in lanes.iter_mut().zip(pixel.as_chunks::<4>().0) {
                                let word = u32::from_le_bytes(q.map(|v| v as u8));
                                *l = [sxtab16(l[0], word), sxtab16_ror8(l[1], word)];
                            }
                        } else if average {
                            acc.iter_mut().zip(pixel).for_each(|(a, &x)| *a += x as i32);
                        } else {
                            acc.iter_mut().zip(pixel).for_each(|(a, &x)| *a = (*a).max(x as i32));
                        }
                    }
                }
                if lanes_fit {
                    for (a, &[even, odd]) in acc.as_chunks_mut::<4>().0.iter_mut().zip(lanes.iter()) {
                        *a = [even as i16 as i32, odd as i16 as i32, (even >> 16) as i16 as i32, (odd >> 16) as i16 as i32];
                    }
                }
                for (o, &a) in sub_mut(output, (oy * ow + ox) * c + first, n).iter_mut().zip(acc.iter()) {
                    let v = match average {
                        false => a,
                        true if a > 0 => (a + taps / 2) / taps,
                        true => (a - taps / 2) / taps,
                    };
                    *o = v.bounded(p.act_min as i32, p.act_max as i32) as i8;
                }
            }
        }
    }
    Ok(())
}
