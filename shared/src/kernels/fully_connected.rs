//! Fully connected, int8 activations, per-output-channel int8 weights `[out, in]`, int32 bias.

use super::conv2d::{convolve, Geometry, Taps};
use crate::types::{expect_len, I32Le, Requant, WeightLayout};
use crate::Error;

#[derive(Clone, Copy, Debug)]
pub struct FullyConnected<'a> {
    pub input_len: usize,
    pub output_len: usize,
    pub input_zp: i32,
    /// Symmetric (zero point 0), `[output_len, input_len]` in `layout`'s order.
    pub weights: &'a [i8],
    pub layout: WeightLayout,
    pub bias: I32Le<'a>,
    pub requant: Requant<'a>,
}

pub fn fully_connected_s8_scratch_bytes(_p: &FullyConnected) -> usize {
    0
}

pub fn fully_connected_s8(p: &FullyConnected, input: &[i8], output: &mut [i8], _scratch: &mut [u8]) -> Result<(), Error> {
    expect_len(input.len(), p.input_len)?;
    expect_len(output.len(), p.output_len)?;
    expect_len(p.weights.len(), p.layout.bytes(p.output_len, p.input_len).unwrap_or(usize::MAX))?;
    expect_len(p.bias.len(), p.output_len)?;
    if p.input_len == 0 {
        return Ok(());
    }
    let (n, m) = (p.input_len, p.output_len);
    let geometry = Geometry { input: (1, 1, n), output: (1, 1, m), kernel: (1, 1), stride: (1, 1), pad: (0, 0), input_zp: p.input_zp };
    convolve(&geometry, n, &Taps::Stored(p.weights, p.layout), input, output, &p.bias, &p.requant);
    Ok(())
}
