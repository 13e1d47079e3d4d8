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

/// One step of the plan as hooks see it: its position in the plan and the layers it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepSpan {
    /// Position of the step in the plan (0-based).
    pub index: usize,
    /// First and last layer the step runs (equal unless layers are fused).
    pub first: usize,
    pub last: usize,
}

impl StepSpan {
    /// The layer this step's cost is charged to ([`crate::protocol::charged_layer`]).
    pub fn charged_layer(&self) -> usize {
        crate::protocol::charged_layer(self.first, self.last)
    }
}

/// Called around every step: timing and tracing on the device, per-layer checks on the host.
///
/// A step is one layer, or a conv and the max-pool fused into it by the optimized engine; then
/// `after_step` gets the pool's output, and the conv's output (never stored) is not reported.
pub trait StepHook {
    fn before_step(&mut self, _step: StepSpan) {}
    fn after_step(&mut self, _step: StepSpan, _output: &[i8]) {}
}

/// The hook that does nothing.
pub struct NoHook;
impl StepHook for NoHook {}

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

/// The kernel that runs one step, decided once when the plan is made.
#[derive(Clone, Copy, Debug)]
enum Kernel<'a> {
    Reference(Layer<'a>),
    Conv(Conv2d<'a>),
    ConvMaxPool(Conv2d<'a>, Pool),
    Conv1ChannelMaxPool(Conv2d<'a>, Pool),
    FullyConnected(FullyConnected<'a>),
    /// A reinterpretation of the buffer: nothing runs.
    View,
}

/// One step of a plan: layers `first..=last` run by `kernel`, reading the current tensor at one
/// end of the arena and writing `output_len` bytes at the other. The caller owns the plan's
/// storage ([`Engine::new`]): a `[Step; N]` with `N` at least the model's layer count.
#[derive(Clone, Copy, Debug)]
pub struct Step<'a> {
    first: u8,
    last: u8,
    kernel: Kernel<'a>,
    output_len: usize,
    /// Whether the step's output is a softmax (the logits are the output before it).
    softmax: bool,
}

impl Step<'static> {
    /// A placeholder to initialize plan storage with.
    pub const EMPTY: Step<'static> = Step { first: 0, last: 0, kernel: Kernel::View, output_len: 0, softmax: false };
}

/// Steps of plan storage that a model with `layer_count` layers may need.
pub const fn plan_steps(layer_count: usize) -> usize {
    layer_count
}

/// A model with its plan: the kernel of every step and the arena it needs, computed once by
/// [`Engine::new`] (or [`Engine::reference`]); [`Engine::run`] only executes it.
#[derive(Clone, Copy, Debug)]
pub struct Engine<'m, 'p> {
    model: Model<'m>,
    arena_bytes: usize,
    input_len: usize,
    optimized: bool,
    steps: &'p [Step<'m>],
}

impl<'m, 'p> Engine<'m, 'p> {
    /// The optimized engine: fused and DSP kernels wherever they apply, reference kernels
    /// elsewhere. The plan is written into `plan` (at least [`plan_steps`] steps).
    pub fn new(model: Model<'m>, plan: &'p mut [Step<'m>]) -> Result<Self, Error> {
        Self::plan(model, true, plan)
    }

    /// Reference kernels only, one layer at a time: the oracle, and every layer's output visible.
    pub fn reference(model: Model<'m>, plan: &'p mut [Step<'m>]) -> Result<Self, Error> {
        Self::plan(model, false, plan)
    }

    fn plan(model: Model<'m>, optimized: bool, plan: &'p mut [Step<'m>]) -> Result<Self, Error> {
        let input_len = model.input_shape().len()?;
        let mut arena_bytes = input_len;
        let (mut i, mut count) = (0, 0);
        while i < model.layer_count() {
            let step = step_at(&model, i, optimized)?;
            arena_bytes = arena_bytes.max(step_footprint(&step, &model)?);
            let available = plan.len();
            *plan.get_mut(count).ok_or(Error::PlanTooSmall { needed: plan_steps(model.layer_count()), available })? = step;
            count += 1;
            i = step.last as usize + 1;
        }
        Ok(Engine { model, arena_bytes, input_len, optimized, steps: &plan[..count] })
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

    /// Steps of the plan (layers fused into one step count once).
    pub fn step_count(&self) -> usize {
        self.steps.len()
    }

    /// Length of [`Inference::logits`]: the output of the last step that is not a softmax (the
    /// input when every step is one).
    pub fn logits_len(&self) -> usize {
        self.steps.iter().rev().find(|s| !s.softmax).map_or(self.input_len, |s| s.output_len)
    }

    /// The layers each step of the plan runs, in order.
    pub fn steps(&self) -> impl Iterator<Item = StepSpan> + '_ {
        self.steps.iter().enumerate().map(|(index, s)| StepSpan { index, first: s.first as usize, last: s.last as usize })
    }

    /// Run one inference on a quantized input (see [`Model::quantize_input`]).
    pub fn run<'a>(&self, input: &[i8], arena: &'a mut [u8], hook: &mut impl StepHook) -> Result<Inference<'a>, Error> {
        let arena_len = arena.len();
        if arena_len < self.arena_bytes {
            return Err(Error::ArenaTooSmall { needed: self.arena_bytes, available: arena_len });
        }
        expect_len(input.len(), self.input_len)?;
        as_i8_mut(&mut arena[..self.input_len]).copy_from_slice(input);

        let mut current = Placement { at_start: true, len: self.input_len };
        let mut logits = current;
        let mut probabilities = None;
        for (index, step) in self.steps.iter().enumerate() {
            let span = StepSpan { index, first: step.first as usize, last: step.last as usize };
            hook.before_step(span);
            if !matches!(step.kernel, Kernel::View) {
                let output = Placement { at_start: !current.at_start, len: step.output_len };
                run_step(&step.kernel, arena, current, output)?;
                current = output;
            }
            current.len = step.output_len;
            hook.after_step(span, as_i8(&arena[current.range(arena_len)]));
            if step.softmax {
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

/// The step of the plan that starts at layer `i`: which layers it fuses and which kernel runs them.
fn step_at<'m>(model: &Model<'m>, i: usize, optimized: bool) -> Result<Step<'m>, Error> {
    let layer = model.layer(i)?;
    let next = if optimized && i + 1 < model.layer_count() { Some(model.layer(i + 1)?) } else { None };
    let (last, kernel) = match (layer, next) {
        (Layer::Reshape { .. }, _) => (i, Kernel::View),
        _ if !optimized => (i, Kernel::Reference(layer)),
        (Layer::Conv2d(c), Some(Layer::MaxPool2d(p))) if fast::conv2d_maxpool_s8_fast_supported(&c, &p) => (i + 1, Kernel::ConvMaxPool(c, p)),
        (Layer::Conv2d(c), Some(Layer::MaxPool2d(p))) if fast::conv2d_c1_maxpool_s8_fast_supported(&c, &p) => {
            (i + 1, Kernel::Conv1ChannelMaxPool(c, p))
        }
        (Layer::Conv2d(c), _) if fast::conv2d_s8_fast_supported(&c) => (i, Kernel::Conv(c)),
        (Layer::FullyConnected(f), _) if fast::fully_connected_s8_fast_supported(&f) => (i, Kernel::FullyConnected(f)),
        _ => (i, Kernel::Reference(layer)),
    };
    let last_layer = if last == i { layer } else { model.layer(last)? };
    Ok(Step { first: i as u8, last: last as u8, kernel, output_len: output_len(&last_layer)?, softmax: matches!(last_layer, Layer::Softmax(_)) })
}

/// Bytes of scratch a step's kernel asks for.
fn step_scratch_bytes(kernel: &Kernel) -> usize {
    match kernel {
        Kernel::Reference(layer) => scratch_bytes(layer),
        Kernel::Conv(c) => fast::conv2d_s8_fast_scratch_bytes(c),
        Kernel::ConvMaxPool(c, p) => fast::conv2d_maxpool_s8_fast_scratch_bytes(c, p),
        Kernel::Conv1ChannelMaxPool(c, p) => fast::conv2d_c1_maxpool_s8_fast_scratch_bytes(c, p),
        Kernel::FullyConnected(f) => fast::fully_connected_s8_fast_scratch_bytes(f),
        Kernel::View => 0,
    }
}

/// Input + scratch + output bytes a step needs at once (a reshape needs nothing extra).
fn step_footprint(step: &Step, model: &Model) -> Result<usize, Error> {
    if let Kernel::View = step.kernel {
        return Ok(0);
    }
    input_len(&model.layer(step.first as usize)?)?
        .checked_add(step.output_len)
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
        Kernel::View => return Ok(()),
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
