//! Runs a parsed model: plans tensor lifetimes in one caller-owned arena and calls the kernels.
//!
//! The model is a chain, so each tensor lives from the layer that writes it to the layer that
//! reads it. The planner puts a layer's input at one end of the arena and its output at the
//! other, alternating, with the kernel's scratch in between; a reshape is a view and moves
//! nothing. The arena a model needs is therefore the largest `input + scratch + output` of any
//! layer, the least any plan without in-place kernels can use.

use crate::format::{Layer, Model};
use crate::kernels::fast;
use crate::kernels::{self, avg_pool_s8, conv2d_s8, fully_connected_s8, max_pool_s8, softmax_s8, Conv2d, FullyConnected, Pool};
use crate::types::{as_i8, as_i8_mut, expect_len};
use crate::Error;

/// Called around every step: timing and tracing on the device, per-layer checks on the host.
///
/// A step is one layer, or a conv and the max-pool fused into it by the optimized engine; then
/// `before_layer` gets the conv's index, `after_layer` the pool's index and output, and the
/// conv's output (never stored) is not reported.
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

/// The kernel that runs one step.
#[derive(Clone, Copy, Debug)]
enum Kernel<'a> {
    Reference(Layer<'a>),
    Conv(Conv2d<'a>),
    ConvMaxPool(Conv2d<'a>, Pool),
    Conv1ChannelMaxPool(Conv2d<'a>, Pool),
    FullyConnected(FullyConnected<'a>),
}

/// One step of a plan: layers `first..=last` run by `kernel`.
#[derive(Clone, Copy, Debug)]
struct Step<'a> {
    first: usize,
    last: usize,
    kernel: Kernel<'a>,
}

/// A model with its memory plan.
#[derive(Clone, Copy, Debug)]
pub struct Engine<'m> {
    model: Model<'m>,
    arena_bytes: usize,
    optimized: bool,
}

impl<'m> Engine<'m> {
    /// The optimized engine: fused and DSP kernels wherever they apply, reference kernels elsewhere.
    pub fn new(model: Model<'m>) -> Result<Self, Error> {
        Self::plan(model, true)
    }

    /// Reference kernels only, one layer at a time: the oracle, and every layer's output visible.
    pub fn reference(model: Model<'m>) -> Result<Self, Error> {
        Self::plan(model, false)
    }

    fn plan(model: Model<'m>, optimized: bool) -> Result<Self, Error> {
        let mut engine = Engine { model, arena_bytes: model.input_shape().len()?, optimized };
        let mut i = 0;
        while i < model.layer_count() {
            let step = engine.step(i)?;
            engine.arena_bytes = engine.arena_bytes.max(step_footprint(&step, &model)?);
            i = step.last + 1;
        }
        Ok(engine)
    }

    /// The step starting at layer `i`.
    fn step(&self, i: usize) -> Result<Step<'m>, Error> {
        let layer = self.model.layer(i)?;
        let single = |kernel| Ok(Step { first: i, last: i, kernel });
        if !self.optimized {
            return single(Kernel::Reference(layer));
        }
        let next = if i + 1 < self.model.layer_count() { Some(self.model.layer(i + 1)?) } else { None };
        match (layer, next) {
            (Layer::Conv2d(c), Some(Layer::MaxPool2d(p))) if fast::conv2d_maxpool_s8_fast_supported(&c, &p) => {
                Ok(Step { first: i, last: i + 1, kernel: Kernel::ConvMaxPool(c, p) })
            }
            (Layer::Conv2d(c), Some(Layer::MaxPool2d(p))) if fast::conv2d_c1_maxpool_s8_fast_supported(&c, &p) => {
                Ok(Step { first: i, last: i + 1, kernel: Kernel::Conv1ChannelMaxPool(c, p) })
            }
            (Layer::Conv2d(c), _) if fast::conv2d_s8_fast_supported(&c) => single(Kernel::Conv(c)),
            (Layer::FullyConnected(f), _) if fast::fully_connected_s8_fast_supported(&f) => single(Kernel::FullyConnected(f)),
            _ => single(Kernel::Reference(layer)),
        }
    }

    /// Whether this engine uses the optimized kernels.
    pub fn is_optimized(&self) -> bool {
        self.optimized
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
        let mut i = 0;
        while i < self.model.layer_count() {
            let step = self.step(i)?;
            let first = self.model.layer(step.first)?;
            let layer = self.model.layer(step.last)?;
            hook.before_layer(step.first, &first);
            let out_len = output_len(&layer)?;
            let output = Placement { at_start: !current.at_start, len: out_len };
            if !matches!(layer, Layer::Reshape { .. }) {
                run_step(&step.kernel, arena, current, output)?;
                current = output;
            }
            current.len = out_len;
            hook.after_layer(step.last, &layer, as_i8(&arena[current.range(arena_len)]));
            i = step.last + 1;
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

/// Bytes of scratch a step's kernel asks for.
fn step_scratch_bytes(kernel: &Kernel) -> usize {
    match kernel {
        Kernel::Reference(layer) => scratch_bytes(layer),
        Kernel::Conv(c) => fast::conv2d_s8_fast_scratch_bytes(c),
        Kernel::ConvMaxPool(c, p) => fast::conv2d_maxpool_s8_fast_scratch_bytes(c, p),
        Kernel::Conv1ChannelMaxPool(c, p) => fast::conv2d_c1_maxpool_s8_fast_scratch_bytes(c, p),
        Kernel::FullyConnected(f) => fast::fully_connected_s8_fast_scratch_bytes(f),
    }
}

/// Input + scratch + output bytes a step needs at once (a reshape needs nothing extra).
fn step_footprint(step: &Step, model: &Model) -> Result<usize, Error> {
    let (first, last) = (model.layer(step.first)?, model.layer(step.last)?);
    if let Layer::Reshape { .. } = last {
        return Ok(0);
    }
    input_len(&first)?
        .checked_add(output_len(&last)?)
        .and_then(|n| n.checked_add(step_scratch_bytes(&step.kernel)))
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

/// Split the arena into the input, scratch and output of one step and run its kernel.
fn run_step(kernel: &Kernel, arena: &mut [u8], input: Placement, output: Placement) -> Result<(), Error> {
    let arena_len = arena.len();
    if input.len + output.len > arena_len {
        return Err(Error::ArenaTooSmall { needed: input.len + output.len, available: arena_len });
    }
    let (low, rest) = arena.split_at_mut(if input.at_start { input.len } else { output.len });
    let (scratch, high) = rest.split_at_mut(arena_len - low.len() - if input.at_start { output.len } else { input.len });
    let (input, output) = if input.at_start { (&*low, high) } else { (&*high, low) };
    let (input, output) = (as_i8(input), as_i8_mut(output));
    let layer = match kernel {
        Kernel::Reference(layer) => layer,
        Kernel::Conv(c) => return fast::conv2d_s8_fast(c, input, output, scratch),
        Kernel::ConvMaxPool(c, p) => return fast::conv2d_maxpool_s8_fast(c, p, input, output, scratch),
        Kernel::Conv1ChannelMaxPool(c, p) => return fast::conv2d_c1_maxpool_s8_fast(c, p, input, output, scratch),
        Kernel::FullyConnected(f) => return fast::fully_connected_s8_fast(f, input, output, scratch),
    };
    match layer {
        Layer::Conv2d(p) => conv2d_s8(p, input, output, scratch),
        Layer::MaxPool2d(p) => max_pool_s8(p, input, output, scratch),
        Layer::AvgPool2d(p) => avg_pool_s8(p, input, output, scratch),
        Layer::FullyConnected(p) => fully_connected_s8(p, input, output, scratch),
        Layer::Softmax(p) => softmax_s8(p, input, output, scratch),
        Layer::Reshape { .. } => Ok(()),
    }
}
