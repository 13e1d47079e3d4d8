//! Max pooling, int8. Input and output share quantization: no requantization.

use super::{window, Pool};
use crate::types::{expect_len, sub, sub_mut};
use crate::types::Bounded;
use crate::Error;

pub fn max_pool_s8_scratch_bytes(_p: &Pool) -> usize {
    0
}

pub fn max_pool_s8(p: &Pool, input: &[i8], output: &mut [i8], _scratch: &mut [u8]) -> Result<(), Error> {
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
            let out = sub_mut(output, (oy * ow + ox) * c, c);
            out.fill(i8::MIN);
            for ky in ky0..ky1 {
                let iy = (y0 + ky as isize) as usize;
                for kx in kx0..kx1 {
                    let ix = (x0 + kx as isize) as usize;
                    for (o, &x) in out.iter_mut().zip(sub(input, (iy * iw + ix) * c, c)) {
                        *o = (*o).max(x);
                    }
                }
            }
            for o in out.iter_mut() {
                *o = (*o).bounded(p.act_min, p.act_max);
            }
        }
    }
    Ok(())
}
