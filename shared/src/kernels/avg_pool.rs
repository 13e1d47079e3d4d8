//! Average pooling, int8, TFLite rounding: the mean of the in-bounds taps, rounded half away
//! from zero. Input and output share quantization.

use super::{window, Pool};
use crate::types::expect_len;
use crate::types::Bounded;
use crate::Error;

pub fn avg_pool_s8_scratch_bytes(_p: &Pool) -> usize {
    0
}

pub fn avg_pool_s8(p: &Pool, input: &[i8], output: &mut [i8], _scratch: &mut [u8]) -> Result<(), Error> {
    let (ih, iw, c) = (p.input.h as usize, p.input.w as usize, p.input.c as usize);
    let (oh, ow) = (p.output.h as usize, p.output.w as usize);
    let (kh, kw, sh, sw) = (p.kernel_h as usize, p.kernel_w as usize, p.stride_h as usize, p.stride_w as usize);
    expect_len(input.len(), p.input.len()?)?;
    expect_len(output.len(), p.output.len()?)?;
    let pad_top = p.padding.leading(ih, kh, sh, oh);
    let pad_left = p.padding.leading(iw, kw, sw, ow);

    for oy in 0..oh {
        let (ky0, ky1, y0) = window(oy, sh, pad_top, kh, ih);
        for ox in 0..ow {
            let (kx0, kx1, x0) = window(ox, sw, pad_left, kw, iw);
            let count = ((ky1 - ky0) * (kx1 - kx0)) as i32;
            if count <= 0 {
                return Err(Error::BadParameter { layer: 0, what: "pooling window entirely in padding" });
            }
            for ch in 0..c {
                let mut sum = 0i32;
                for ky in ky0..ky1 {
                    let iy = (y0 + ky as isize) as usize;
                    for kx in kx0..kx1 {
                        let ix = (x0 + kx as isize) as usize;
                        sum += input.get((iy * iw + ix) * c + ch).map_or(0, |&x| x as i32);
                    }
                }
                let mean = if sum > 0 { (sum + count / 2) / count } else { (sum - count / 2) / count };
                if let Some(o) = output.get_mut((oy * ow + ox) * c + ch) {
                    *o = mean.bounded(p.act_min as i32, p.act_max as i32) as i8;
                }
            }
        }
    }
    Ok(())
}
