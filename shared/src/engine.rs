//! Runs a parsed model: plans tensor lifetimes in one caller-owned arena and calls the kernels.
//!
//! The model is a chain, so each tensor lives from the layer that writes it to the layer that
//! reads it. The planner puts a layer's input at one end of the arena and its output at the
//! other, alternating, with the kernel's scratch in between; a reshape is a view and moves
//! nothing. The arena a model needs is therefore the largest `input + scratch + output` of any
//! layer, the least any plan without in-place kernels can use.

use crate::format::{Layer, Model};
use crate::kernels::{self, avg_pool_s8, conv2d_s8, fully_connected_s8, max_pool_s8, softmax_s8};
use crate::types::{as_i8, as_i8_mut, expect_len};
use crate::Error;

/// Called around every layer: timing and tracing on the device, per-layer checks on the host.
pub trait LayerHook {
    fn before_layer(&mut self, _index: usize, _layer: &Layer) {}
    fn after_layer(&mut self, _index: usize, _layer: &Layer, _output: &[i8]) {}
}

/// The hook that does nothing.
pub struct NoHook;
impl LayerHook for NoHook {}

/// What one inference produced, borrowed from the arena.
#[derive(Debug)]
pub struct Inference<'a> {
    /// The output of the last layer that is not a softmax: the int8 logits.
    pub logits: &'a [i8],
    /// The softmax output, when the model ends with a softmax.
    pub probabilities: Option<&'a [i8]>,
}

impl Inference<'_> {
    /// The predicted class: first index of the largest logit.
    pub fn class(&self) -> usize {
        kernels::argmax_s8(self.logits).unwrap_or(0)
    }
}

/// Bytes of scratch a layer's kernel asks for.
pub fn scratch_bytes(layer: &Layer) -> usize {
    match layer {
        Layer::Conv2d(p) => kernels::conv2d_s8_scratch_bytes(p),
        Layer::MaxPool2d(p) => kernels::max_pool_s8_scratch_bytes(p),
        Layer::AvgPool2d(p) => kernels::avg_pool_s8_scratch_bytes(p),
        Layer::FullyConnected(p) => kernels::fully_connected_s8_scratch_bytes(p),
        Layer::Softmax(p) => kernels::softmax_s8_scratch_bytes(p),
        Layer::Reshape { .. } => 0,
    }
}

/// Where a tensor sits in the arena: at its start or at its end, and how long it is.
#[derive(Clone, Copy, Debug)]
struct Placement {
    at_start: bool,
    len: usize,
}

impl Placement {
    fn range(self, arena_len: usize) -> core::ops::Range<usize> {
        if self.at_start {
            0..self.len
        } else {
            arena_len - self.len..arena_len
        }
    }
}

/// A model with its memory plan.
#[derive(Clone, Copy, Debug)]
pub struct Engine<'m> {
    model: Model<'m>,
    arena_bytes: usize,
}

impl<'m> Engine<'m> {
    pub fn new(model: Model<'m>) -> Result<Self, Error> {
        let mut arena_bytes = model.input_shape().len()?;
        for i in 0..model.layer_count() {
            arena_bytes = arena_bytes.max(layer_footprint(&model.layer(i)?)?);
        }
        Ok(Engine { model, arena_bytes })
    }

    pub fn model(&self) -> &Model<'m> {
        &self.model
    }

    /// Bytes of arena [`Engine::run`] needs: activations plus scratch, nothing else.
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    /// Run one inference on a quantized input (see [`Model::quantize_input`]).
    pub fn run<'a>(&self, input: &[i8], arena: &'a mut [u8], hook: &mut impl LayerHook) -> Result<Inference<'a>, Error> {
        let arena_len = arena.len();
        if arena_len < self.arena_bytes {
            return Err(Error::ArenaTooSmall { needed: self.arena_bytes, available: arena_len });
        }
        let input_len = self.model.input_shape().len()?;
        expect_len(input.len(), input_len)?;
        as_i8_mut(&mut arena[..input_len]).copy_from_slice(input);

        let mut current = Placement { at_start: true, len: input_len };
        let mut logits = current;
        let mut probabilities = None;
        for i in 0..self.model.layer_count() {
            let layer = self.model.layer(i)?;
            hook.before_layer(i, &layer);
            let out_len = output_len(&layer)?;
            let output = Placement { at_start: !current.at_start, len: out_len };
            if !matches!(layer, Layer::Reshape { .. }) {
                run_layer(&layer, arena, current, output)?;
                current = output;
            }
            current.len = out_len;
            hook.after_layer(i, &layer, as_i8(&arena[current.range(arena_len)]));
            if matches!(layer, Layer::Softmax(_)) {
                probabilities = Some(current);
            } else {
                logits = current;
                probabilities = None;
            }
        }
        let arena: &'a [u8] = arena;
        Ok(Inference {
            logits: as_i8(&arena[logits.range(arena_len)]),
            probabilities: probabilities.map(|p| as_i8(&arena[p.range(arena_len)])),
        })
    }
}

/// Input + scratch + output bytes a layer needs at once (a reshape needs nothing extra).
fn layer_footprint(layer: &Layer) -> Result<usize, Error> {
    if let Layer::Reshape { .. } = layer {
        return Ok(0);
    }
    input_len(layer)?
        .checked_add(output_len(layer)?)
        .and_then(|n| n.checked_add(scratch_bytes(layer)))
        .ok_or(Error::SizeOverflow)
}

fn input_len(layer: &Layer) -> Result<usize, Error> {
    match layer {
        Layer::Conv2d(p) => p.input.len(),
        Layer::MaxPool2d(p) | Layer::AvgPool2d(p) => p.input.len(),
        Layer::FullyConnected(p) => Ok(p.input_len),
        Layer::Reshape { input, .. } => input.len(),
        Layer::Softmax(p) => p.rows.checked_mul(p.depth).ok_or(Error::SizeOverflow),
    }
}

fn output_len(layer: &Layer) -> Result<usize, Error> {
    match layer {
        Layer::Conv2d(p) => p.output.len(),
        Layer::MaxPool2d(p) | Layer::AvgPool2d(p) => p.output.len(),
        Layer::FullyConnected(p) => Ok(p.output_len),
        Layer::Reshape { output, .. } => output.len(),
        Layer::Softmax(p) => p.rows.checked_mul(p.depth).ok_or(Error::SizeOverflow),
    }
}

/// Split the arena into the input, scratch and output of one layer and run its kernel.
fn run_layer(layer: &Layer, arena: &mut [u8], input: Placement, output: Placement) -> Result<(), Error> {
    let arena_len = arena.len();
    if input.len + output.len > arena_len {
        return Err(Error::ArenaTooSmall { needed: input.len + output.len, available: arena_len });
    }
    let (low, rest) = arena.split_at_mut(if input.at_start { input.len } else { output.len });
    let (scratch, high) = rest.split_at_mut(arena_len - low.len() - if input.at_start { output.len } else { input.len });
    let (input, output) = if input.at_start { (&*low, high) } else { (&*high, low) };
    let (input, output) = (as_i8(input), as_i8_mut(output));
    match layer {
        Layer::Conv2d(p) => conv2d_s8(p, input, output, scratch),
        Layer::MaxPool2d(p) => max_pool_s8(p, input, output, scratch),
        Layer::AvgPool2d(p) => avg_pool_s8(p, input, output, scratch),
        Layer::FullyConnected(p) => fully_connected_s8(p, input, output, scratch),
        Layer::Softmax(p) => softmax_s8(p, input, output, scratch),
        Layer::Reshape { .. } => Ok(()),
    }
}
