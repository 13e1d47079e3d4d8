//! Spatial zero-padding of an int8 tensor (TFLite PAD): the border holds the tensor's zero
//! point, i.e. real 0. Input and output share quantization.

use crate::types::{expect_len, sub, sub_mut, Shape};
use crate::Error;

#[derive(Clone, Copy, Debug)]
pub struct Pad {
    pub input: Shape,
    pub output: Shape,
    /// Rows added above and columns added to the left (the rest goes below and to the right).
    pub top: u16,
    pub left: u16,
    /// The value of the border: the zero point.
    pub value: i8,
}

pub fn pad_s8_scratch_bytes(_p: &Pad) -> usize {
    0
}

pub fn pad_s8(p: &Pad, input: &[i8], output: &mut [i8], _scratch: &mut [u8]) -> Result<(), Error> {
    expect_len(input.len(), p.input.len()?)?;
    expect_len(output.len(), p.output.len()?)?;
    let (ih, iw, c) = (p.input.h as usize, p.input.w as usize, p.input.c as usize);
    let (ow, top, left) = (p.output.w as usize, p.top as usize, p.left as usize);
    if p.output.c as usize != c || top + ih > p.output.h as usize || left + iw > ow {
        return Err(Error::BufferSize { expected: p.output.len()?, found: output.len() });
    }
    crate::dsp::fill_bytes(output, p.value);
    for y in 0..ih {
        let row = sub(input, y * iw * c, iw * c);
        let to = sub_mut(output, ((y + top) * ow + left) * c, iw * c);
        if to.len() == row.len() {
            crate::dsp::copy_bytes(to, row);
        }
    }
    Ok(())
}
