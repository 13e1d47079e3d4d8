//! Fully connected, int8 activations, per-output-channel int8 weights `[out, in]`, int32 bias.

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
    for (c, o) in output.iter_mut().enumerate() {
        let acc: i32 = input
            .iter()
            .enumerate()
            .map(|(k, &x)| p.layout.weight(p.weights, c, k, p.input_len) * (x as i32 - p.input_zp))
            .sum();
        *o = p.requant.apply(acc + p.bias.get(c), c);
    }
    Ok(())
}
