//! Runs a parsed model: plans once (Prepare), runs many times (Eval), in one caller-owned arena.
//!
//! [`Engine::new`] turns the op list into steps (an op; a conv and the max-pool after it when
//! the conv's output has no other reader; or a residual block, conv, conv and the ADD of the
//! second conv's output and the block's input, run row by row), decides each step's kernel and
//! decodes each op once. Then it plans memory over tensor lifetimes: a tensor lives from the
//! step that writes it to the last step that reads it (the logits and the output to the end); a
//! reshape's output is its input's bytes; each step's scratch lives for that step. A conv,
//! depthwise conv or residual block whose input dies with it writes over that input, at the
//! offset its pixel order allows. Buffers are placed greedily, largest first (or by first use,
//! whichever needs less), at the lowest offset that overlaps no buffer alive at the same time
//! (TFLM's greedy planner). [`Engine::run`] only executes the plan.

use core::ops::Range;

use crate::format::{Layer, Model, Op, MAX_OPS, MAX_TENSORS, NO_TENSOR};
use crate::kernels::fast;
use crate::kernels::{self, Add, Conv2d, DepthwiseConv2d, FullyConnected, Pool};
use crate::types::{as_i8, as_i8_mut, expect_len, Padding, Shape, WeightLayout};
use crate::error::LayerIndex;
use crate::Error;

/// One step of the plan as hooks see it: its position in the plan and the ops it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepSpan {
    /// Position of the step in the plan (0-based).
    pub index: usize,
    /// First and last op the step runs (equal unless ops are fused).
    pub first: usize,
    pub last: usize,
}

impl StepSpan {
    /// The op this step's cost is charged to ([`crate::protocol::charged_layer`]).
    pub fn charged_layer(&self) -> usize {
        crate::protocol::charged_layer(self.first, self.last)
    }
}

/// Called around every step: timing and tracing on the device, per-op checks on the host.
///
/// A step is one op, or a conv and the max-pool fused into it by the optimized engine; then
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
    /// The logits: the input of a final softmax, else the model's output.
    pub logits: &'a [i8],
    /// The softmax output, when the model ends with a softmax.
    pub probabilities: Option<&'a [i8]>,
}

impl<'a> Inference<'a> {
    /// The predicted class: first index of the largest logit.
    pub fn class(&self) -> usize {
        kernels::argmax_s8(self.logits).unwrap_or(0)
    }

    /// The model's output tensor.
    pub fn output(&self) -> &'a [i8] {
        self.probabilities.unwrap_or(self.logits)
    }
}

/// Bytes of scratch an op's reference kernel asks for.
pub fn scratch_bytes(layer: &Layer) -> usize {
    match layer {
        Layer::Conv2d(p) => kernels::conv2d_s8_scratch_bytes(p),
        Layer::DepthwiseConv2d(p) => kernels::depthwise_conv2d_s8_scratch_bytes(p),
        Layer::MaxPool2d(p) => kernels::max_pool_s8_scratch_bytes(p),
        Layer::AvgPool2d(p) => kernels::avg_pool_s8_scratch_bytes(p),
        Layer::FullyConnected(p) => kernels::fully_connected_s8_scratch_bytes(p),
        Layer::Add(p) => kernels::add_s8_scratch_bytes(p),
        Layer::Mean(p) => kernels::mean_s8_scratch_bytes(p),
        Layer::Pad(p) => kernels::pad_s8_scratch_bytes(p),
        Layer::Softmax(p) => kernels::softmax_s8_scratch_bytes(p),
        Layer::Reshape { .. } => 0,
    }
}

/// The kernel that runs one step, decided once when the plan is made.
#[derive(Clone, Copy, Debug)]
enum Kernel<'a> {
    Reference(Layer<'a>),
    Conv(Conv2d<'a>),
    ConvMaxPool(Conv2d<'a>, Pool),
    WinogradMaxPool(Conv2d<'a>, Pool),
    Depthwise(DepthwiseConv2d<'a>),
    Add(Add),
    Conv1ChannelMaxPool(Conv2d<'a>, Pool),
    FullyConnected(FullyConnected<'a>),
    /// A residual block: conv A, conv B on A's output, ADD of B's output and A's input X
    /// (`x_first`: X is the ADD's first input), row by row over X. Conv B and the ADD are kept
    /// as the kernels of plan slots `aux` and `aux + 1`, two of the slots the fusion left
    /// unused (counted from the end), which keeps every step of the plan small.
    Residual { a: Conv2d<'a>, aux: u8, x_first: bool },
    /// A reinterpretation of the buffer: nothing runs.
    View,
}

/// One step of a plan: ops `first..=last` run by `kernel`, reading `inputs`, writing `output`.
#[derive(Clone, Copy, Debug)]
pub struct Step<'a> {
    first: u8,
    last: u8,
    kernel: Kernel<'a>,
    inputs: [u16; 2],
    output: u16,
    scratch: Buffer,
    /// The output overlaps the input ("in place"), starting this many bytes after it; and
    /// whether the kernel runs its pixels backwards (then the output is at or after the input).
    in_place: Option<(i32, bool)>,
}

impl Step<'static> {
    const EMPTY: Step<'static> = Step { first: 0, last: 0, kernel: Kernel::View, inputs: [NO_TENSOR; 2], output: 0, scratch: Buffer::NONE, in_place: None };
}

/// A span of the arena and when it is in use (steps `first..=last`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Buffer {
    offset: u32,
    len: u32,
    first: u16,
    last: u16,
}

impl Buffer {
    const NONE: Buffer = Buffer { offset: 0, len: 0, first: u16::MAX, last: 0 };

    fn range(&self) -> Range<usize> {
        self.offset as usize..self.offset as usize + self.len as usize
    }

    fn live_with(&self, other: &Buffer) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    fn used(&self) -> bool {
        self.len > 0 && self.first <= self.last
    }
}

/// Storage for an engine's plan, owned by the caller (a `static` on the device, a `Box` on the
/// host): every step, every tensor's place in the arena.
#[derive(Clone, Debug)]
pub struct Plan<'m> {
    steps: [Step<'m>; MAX_OPS],
    /// Per tensor: its buffer (a reshape's output shares its input's: `root`).
    tensors: [Buffer; MAX_TENSORS],
    root: [u16; MAX_TENSORS],
    /// Per root tensor: the group of buffers placed together (outputs written in place over
    /// their inputs) and its offset in that group.
    group: [u16; MAX_TENSORS],
    rel: [i32; MAX_TENSORS],
}

impl Plan<'static> {
    pub const fn new() -> Plan<'static> {
        Plan {
            steps: [Step::EMPTY; MAX_OPS],
            tensors: [Buffer::NONE; MAX_TENSORS],
            root: [0; MAX_TENSORS],
            group: [0; MAX_TENSORS],
            rel: [0; MAX_TENSORS],
        }
    }
}

impl Default for Plan<'static> {
    fn default() -> Self {
        Plan::new()
    }
}

/// Where a tensor or a step's scratch sits in the arena, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// `Some(tensor)` for a tensor (a reshape's output shares its input's bytes and is not listed), `None` for scratch.
    pub tensor: Option<usize>,
    /// `Some(step)` for a step's scratch.
    pub scratch_of: Option<usize>,
    pub offset: usize,
    pub len: usize,
    /// The steps during which the bytes are in use.
    pub first_step: usize,
    pub last_step: usize,
}

/// A model with its plan: the kernel of every step and where every tensor lives, computed once
/// by [`Engine::new`] (or [`Engine::reference`]); [`Engine::run`] only executes it.
#[derive(Clone, Copy, Debug)]
pub struct Engine<'m, 'p> {
    model: Model<'m>,
    plan: &'p Plan<'m>,
    step_count: usize,
    arena_bytes: usize,
    optimized: bool,
    /// The logits and output tensors, found once (the search reads op records).
    logits: u16,
    output: u16,
}

impl<'m, 'p> Engine<'m, 'p> {
    /// The optimized engine: fused and DSP kernels wherever they apply, reference kernels
    /// elsewhere. The plan is written into `plan`.
    pub fn new(model: Model<'m>, plan: &'p mut Plan<'m>) -> Result<Self, Error> {
        Self::prepare(model, true, plan)
    }

    /// Reference kernels only, one op at a time: the oracle, and every op's output visible.
    pub fn reference(model: Model<'m>, plan: &'p mut Plan<'m>) -> Result<Self, Error> {
        Self::prepare(model, false, plan)
    }

    fn prepare(model: Model<'m>, optimized: bool, plan: &'p mut Plan<'m>) -> Result<Self, Error> {
        let step_count = plan_steps(&model, optimized, plan)?;
        plan_lifetimes(&model, step_count, plan);
        plan_in_place(&model, step_count, plan);
        let arena_bytes = place_buffers(&model, step_count, plan);
        let (logits, output) = (model.logits_tensor() as u16, model.output_tensor() as u16);
        Ok(Engine { model, plan, step_count, arena_bytes, optimized, logits, output })
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

    /// Steps of the plan (ops fused into one step count once).
    pub fn step_count(&self) -> usize {
        self.step_count
    }

    /// The ops each step of the plan runs, in order.
    pub fn steps(&self) -> impl Iterator<Item = StepSpan> + '_ {
        self.plan.steps[..self.step_count].iter().enumerate().map(|(index, s)| StepSpan { index, first: s.first as usize, last: s.last as usize })
    }

    /// Length of [`Inference::logits`].
    pub fn logits_len(&self) -> usize {
        self.model.tensor(self.model.logits_tensor()).shape.len().unwrap_or(0)
    }

    /// Length of the model's output.
    pub fn output_len(&self) -> usize {
        self.model.output_shape().len().unwrap_or(0)
    }

    /// The bytes of tensor `t` in the arena (`None` for a tensor a fused step never stores).
    pub fn tensor_range(&self, t: usize) -> Option<Range<usize>> {
        let root = *self.plan.root.get(t)? as usize;
        let b = self.plan.tensors.get(root)?;
        b.used().then(|| b.range())
    }

    /// Every stored tensor and every step's scratch, with its bytes and its lifetime.
    pub fn placements(&self) -> impl Iterator<Item = Placement> + '_ {
        let tensors = (0..self.model.tensor_count()).filter(|&t| self.plan.root[t] as usize == t).filter_map(move |t| {
            let b = self.plan.tensors[t];
            b.used().then_some(Placement {
                tensor: Some(t),
                scratch_of: None,
                offset: b.offset as usize,
                len: b.len as usize,
                first_step: b.first as usize,
                last_step: b.last as usize,
            })
        });
        let scratch = self.plan.steps[..self.step_count].iter().enumerate().filter(|(_, s)| s.scratch.used()).map(|(i, s)| Placement {
            tensor: None,
            scratch_of: Some(i),
            offset: s.scratch.offset as usize,
            len: s.scratch.len as usize,
            first_step: i,
            last_step: i,
        });
        tensors.chain(scratch)
    }

    /// The bytes of the model's input tensor in an arena of [`Engine::arena_bytes`].
    pub fn input_range(&self) -> Range<usize> {
        self.tensor_range(self.model.input_tensor()).unwrap_or(0..0)
    }

    /// Run one inference on a quantized input (see the model input's scale and zero point).
    pub fn run<'a>(&self, input: &[i8], arena: &'a mut [u8], hook: &mut impl StepHook) -> Result<Inference<'a>, Error> {
        let at = self.input_range();
        expect_len(input.len(), at.len())?;
        self.check_arena(arena)?;
        let needed = at.end;
        let available = arena.len();
        as_i8_mut(arena.get_mut(at).ok_or(Error::ArenaTooSmall { needed, available })?).copy_from_slice(input);
        self.run_in_place(arena, hook)
    }

    /// Run one inference on an input already written at [`Engine::input_range`] of `arena`
    /// (the device reads its inputs straight into the arena).
    pub fn run_in_place<'a>(&self, arena: &'a mut [u8], hook: &mut impl StepHook) -> Result<Inference<'a>, Error> {
        self.check_arena(arena)?;
        for (index, step) in self.plan.steps.iter().take(self.step_count).enumerate() {
            let span = StepSpan { index, first: step.first as usize, last: step.last as usize };
            hook.before_step(span);
            let output = self.tensor_range(step.output as usize).ok_or(Error::ArenaTooSmall { needed: self.arena_bytes, available: arena.len() })?;
            if let (Some((_, reverse)), Some(input)) = (step.in_place, self.input_of(step, 0)) {
                run_in_place_kernel(self.plan, &step.kernel, arena, input, output.clone(), step.scratch.range(), reverse)?;
            } else if !matches!(step.kernel, Kernel::View) {
                let ins = [self.input_of(step, 0), self.input_of(step, 1)];
                let (out, scratch, inputs) = regions(arena, output.clone(), step.scratch.range(), ins)?;
                run_kernel(self.plan, &step.kernel, inputs, as_i8_mut(out), scratch)?;
            }
            hook.after_step(span, arena.get(output).map_or(&[], as_i8));
        }
        let arena: &'a [u8] = arena;
        let slice = |t: usize| self.tensor_range(t).and_then(|r| arena.get(r)).map(as_i8);
        let (logits, output) = (self.logits as usize, self.output as usize);
        Ok(Inference { logits: slice(logits).unwrap_or(&[]), probabilities: (output != logits).then(|| slice(output)).flatten() })
    }

    fn check_arena(&self, arena: &[u8]) -> Result<(), Error> {
        if arena.len() < self.arena_bytes {
            return Err(Error::ArenaTooSmall { needed: self.arena_bytes, available: arena.len() });
        }
        Ok(())
    }

    fn input_of(&self, step: &Step, k: usize) -> Option<Range<usize>> {
        match step.inputs[k] {
            NO_TENSOR => None,
            t => self.tensor_range(t as usize),
        }
    }
}

/// A tensor index the parser has checked (below the model's tensor count, at most
/// [`MAX_TENSORS`], a power of two), restated so that the compiler sees it in range of the
/// plan's tables: the identity on every valid index, one AND instruction.
#[inline(always)]
fn tix(t: impl Into<usize>) -> usize {
    const { assert!(MAX_TENSORS.is_power_of_two()) };
    t.into() % MAX_TENSORS
}

/// Decide the steps: fusions and kernels. Returns the step count.
#[inline(never)]
fn plan_steps<'m>(model: &Model<'m>, optimized: bool, plan: &mut Plan<'m>) -> Result<usize, Error> {
    let (mut i, mut count, mut aux) = (0, 0, MAX_OPS);
    let too_small = Error::PlanTooSmall { needed: model.op_count(), available: MAX_OPS };
    while i < model.op_count() {
        let (mut step, parts) = step_at(model, i, optimized)?;
        plan_requant(&mut step.kernel);
        // Slots for a residual block's conv B and ADD, from the end: a block is one step for
        // three ops, so steps and these slots together never outnumber the ops.
        if let (Kernel::Residual { aux: at, .. }, Some((b, add))) = (&mut step.kernel, parts) {
            aux = aux.checked_sub(2).filter(|&a| a > count).ok_or(too_small)?;
            *at = aux as u8;
            let conv_b = &mut plan.steps[aux % MAX_OPS].kernel;
            *conv_b = Kernel::Conv(b);
            plan_requant(conv_b);
            plan.steps[(aux + 1) % MAX_OPS].kernel = Kernel::Add(add);
        }
        // At most one step per op: the plan storage always has room for a parsed model.
        *plan.steps.get_mut(count).filter(|_| count < aux).ok_or(too_small)? = step;
        count += 1;
        i = step.last as usize + 1;
    }
    Ok(count)
}

/// The step of the plan that starts at op `i`: which ops it fuses and which kernel runs them;
/// for a residual block, also its conv B and ADD.
fn step_at<'m>(model: &Model<'m>, i: usize, optimized: bool) -> Result<(Step<'m>, Option<(Conv2d<'m>, Add)>), Error> {
    let layer = model.op(i)?;
    let rec = model.op_record(i);
    if let Some((a, b, add, x_first)) = optimized.then(|| residual_at(model, i, layer)).flatten() {
        let scratch = Buffer { len: fast::residual_block_s8_fast_scratch_bytes(&a, &b) as u32, ..Buffer::NONE };
        let (op, output) = (i as u8, model.op_record(i + 2).output);
        let kernel = Kernel::Residual { a, aux: 0, x_first };
        return Ok((Step { first: op, last: op + 2, kernel, inputs: rec.inputs, output, scratch, in_place: None }, Some((b, add))));
    }
    let next = if optimized && i + 1 < model.op_count() && fusable(model, i) { Some(model.op(i + 1)?) } else { None };
    let (last, kernel) = match (layer, next) {
        (Layer::Reshape { .. }, _) => (i, Kernel::View),
        _ if !optimized => (i, Kernel::Reference(layer)),
        (Layer::Conv2d(c), Some(Layer::MaxPool2d(p))) if fast::conv2d_maxpool_s8_fast_supported(&c, &p) => (i + 1, Kernel::ConvMaxPool(c, p)),
        (Layer::Conv2d(c), Some(Layer::MaxPool2d(p))) if fast::conv2d_maxpool_s8_winograd_supported(&c, &p) => (i + 1, Kernel::WinogradMaxPool(c, p)),
        (Layer::Conv2d(c), Some(Layer::MaxPool2d(p))) if fast::conv2d_c1_maxpool_s8_fast_supported(&c, &p) => {
            (i + 1, Kernel::Conv1ChannelMaxPool(c, p))
        }
        (Layer::Conv2d(c), _) if fast::conv2d_s8_fast_supported(&c) => (i, Kernel::Conv(c)),
        (Layer::FullyConnected(f), _) if fast::fully_connected_s8_fast_supported(&f) => (i, Kernel::FullyConnected(f)),
        (Layer::DepthwiseConv2d(d), _) if fast::depthwise_conv2d_s8_fast_supported(&d) => (i, Kernel::Depthwise(d)),
        (Layer::Add(a), _) if fast::add_s8_fast_supported(&a) => (i, Kernel::Add(a)),
        // The writer gives Winograd weights only to convs the Winograd kernel takes; any other
        // is refused here, as the device (without the reference's Winograd reader) would.
        (Layer::Conv2d(c), _) if c.layout == WeightLayout::Winograd2x2 => {
            return Err(Error::BadParameter { layer: i as LayerIndex, what: "Winograd weights on a conv the Winograd kernel does not take (3x3, stride 1, VALID, input channels in quads, 2x2 max-pool next)" });
        }
        _ => (i, Kernel::Reference(layer)),
    };
    let output = model.op_record(last).output;
    let scratch = Buffer { len: step_scratch_bytes(&kernel) as u32, ..Buffer::NONE };
    Ok((Step { first: i as u8, last: last as u8, kernel, inputs: rec.inputs, output, scratch, in_place: None }, None))
}

/// Choose the requantization form of a fast kernel's conv, FC or depthwise conv once, for
/// every inference (see [`fast::plan_requant`]).
fn plan_requant(kernel: &mut Kernel) {
    match kernel {
        Kernel::Conv(c) | Kernel::ConvMaxPool(c, _) | Kernel::WinogradMaxPool(c, _) | Kernel::Conv1ChannelMaxPool(c, _) | Kernel::Residual { a: c, .. } => plan_conv_requant(c),
        Kernel::FullyConnected(f) => fast::plan_requant(&mut f.requant, f.bias, f.input_len),
        Kernel::Depthwise(d) => fast::plan_requant(&mut d.requant, d.bias, d.kernel_h as usize * d.kernel_w as usize),
        _ => {}
    }
}

fn plan_conv_requant(c: &mut Conv2d) {
    let taps = c.kernel_h as usize * c.kernel_w as usize * c.input.c as usize;
    fast::plan_requant(&mut c.requant, c.bias, taps);
}

/// Ops `i..=i + 2` as one residual block (conv A on X, conv B on A's output only, ADD of B's
/// output and X, and no other reader of X or of either conv's output), if the fused kernel
/// runs it: conv A, conv B, the ADD and whether X is the ADD's first input.
fn residual_at<'m>(model: &Model<'m>, i: usize, layer: Layer<'m>) -> Option<(Conv2d<'m>, Conv2d<'m>, Add, bool)> {
    // Op codes first: nothing more is decoded (and no stack spent) for other ops.
    let code = |k: usize| model.op_record(k).op;
    if i + 2 >= model.op_count() || [code(i + 1), code(i + 2)] != [Op::Conv2d as u8, Op::Add as u8] || !fusable(model, i) {
        return None;
    }
    let (Layer::Conv2d(a), Ok(Layer::Conv2d(b)), Ok(Layer::Add(add))) = (layer, model.op(i + 1), model.op(i + 2)) else { return None };
    let (x, y) = (model.op_record(i).inputs[0], model.op_record(i + 1).output);
    let sum = model.op_record(i + 2).inputs;
    let x_first = sum == [x, y];
    let joined = (x_first || sum == [y, x]) && read_once(model, y as usize) && model.consumers(x as usize).count() == 2;
    (joined && fast::residual_block_s8_fast_supported(&a, &b, &add)).then_some((a, b, add, x_first))
}

/// Whether op `i` may be fused into op `i + 1`: `i + 1` reads `i`'s output, and nothing else
/// does (nor is it the logits or the output, which must be stored).
fn fusable(model: &Model, i: usize) -> bool {
    let t = model.op_record(i).output as usize;
    let next = model.op_record(i + 1);
    next.inputs[0] as usize == t && next.inputs[1] == NO_TENSOR && read_once(model, t)
}

/// Whether tensor `t` has one reader and is neither the logits nor the output (which must be
/// stored): a step may fuse it away.
fn read_once(model: &Model, t: usize) -> bool {
    model.consumers(t).count() == 1 && t != model.logits_tensor() && t != model.output_tensor()
}

/// Every stored tensor's lifetime, on its root buffer.
#[inline(never)]
fn plan_lifetimes(model: &Model, step_count: usize, plan: &mut Plan) {
    for t in 0..model.tensor_count() {
        plan.root[t] = t as u16;
        plan.tensors[t] = Buffer { len: model.tensor(t).shape.len().unwrap_or(0) as u32, ..Buffer::NONE };
    }
    let input = model.input_tensor();
    plan.tensors[tix(input)].first = 0;
    let touch = |plan: &mut Plan, t: u16, s: usize| {
        let b = &mut plan.tensors[tix(plan.root[tix(t)])];
        b.first = b.first.min(s as u16);
        b.last = b.last.max(s as u16);
    };
    for s in 0..step_count.min(MAX_OPS) {
        let step = plan.steps[s];
        if let Kernel::View = step.kernel {
            plan.root[tix(step.output)] = plan.root[tix(step.inputs[0])];
        }
        for t in step.inputs.into_iter().filter(|&t| t != NO_TENSOR) {
            touch(plan, t, s);
        }
        touch(plan, step.output, s);
        plan.steps[s].scratch.first = s as u16;
        plan.steps[s].scratch.last = s as u16;
    }
    let end = step_count.saturating_sub(1);
    for t in [model.logits_tensor(), model.output_tensor()] {
        touch(plan, t as u16, end);
    }
}

/// Where an in-place kernel may put its output relative to its input (bytes; see
/// [`fast::Io::Shared`]) running forward and running backward, if it can write in place at all.
fn in_place_deltas(kernel: &Kernel) -> Option<[i64; 2]> {
    match kernel {
        Kernel::Conv(c) => Some(window_deltas(c.input, c.output, [c.kernel_h, c.kernel_w, c.stride_h, c.stride_w], c.padding)),
        Kernel::Depthwise(d) => Some(window_deltas(d.input, d.output, [d.kernel_h, d.kernel_w, d.stride_h, d.stride_w], d.padding)),
        // Row r of the block's output is written after the last read of input row r.
        Kernel::Residual { .. } => Some([0, 0]),
        _ => None,
    }
}

/// For a kernel that reads each output pixel's whole window before writing that pixel, in pixel
/// order: how far (bytes) its output may start from its input, forward and backward. Forward,
/// output pixel q's bytes must end at or before the first input byte a later pixel reads,
/// the start of window q + 1: `delta <= first(q + 1) * ic - (q + 1) * oc`. Backward, pixel q's
/// bytes must start after the last byte of window q - 1:
/// `delta >= (last(q - 1) + 1) * ic - q * oc`.
fn window_deltas(input: Shape, output: Shape, [kh, kw, sh, sw]: [u8; 4], padding: Padding) -> [i64; 2] {
    let (ih, iw, ic) = (input.h as usize, input.w as usize, input.c as i64);
    let (oh, ow, oc) = (output.h as usize, output.w as usize, output.c as i64);
    let (kh, kw, sh, sw) = (kh as usize, kw as usize, sh as usize, sw as usize);
    let top = padding.leading(ih, kh, sh, oh);
    let left = padding.leading(iw, kw, sw, ow);
    let (mut forward, mut backward) = (0i64, 0i64);
    for q in 0..oh * ow {
        let (oy, ox) = (q / ow.max(1), q % ow.max(1));
        let (ky0, ky1, y0) = crate::kernels::window(oy, sh, top, kh, ih);
        let (kx0, kx1, x0) = crate::kernels::window(ox, sw, left, kw, iw);
        if ky0 == ky1 || kx0 == kx1 {
            continue;
        }
        let first = (y0 + ky0 as isize) as i64 * iw as i64 + (x0 + kx0 as isize) as i64;
        let last = (y0 + ky1 as isize - 1) as i64 * iw as i64 + (x0 + kx1 as isize - 1) as i64;
        let q = q as i64;
        if q > 0 {
            forward = forward.min(first * ic - q * oc);
        }
        if q + 1 < (oh * ow) as i64 {
            backward = backward.max((last + 1) * ic - (q + 1) * oc);
        }
    }
    [forward, backward]
}

/// Steps that write over their input: the input's last reader, neither logits nor output.
#[inline(never)]
fn plan_in_place(model: &Model, step_count: usize, plan: &mut Plan) {
    for t in 0..model.tensor_count() {
        plan.group[t] = t as u16;
        plan.rel[t] = 0;
    }
    let kept = [model.logits_tensor(), model.output_tensor()].map(|t| plan.root[tix(t)]);
    // Per group leader: the span its members cover so far, relative to it.
    let mut low = [0i64; MAX_TENSORS];
    let mut high = [0i64; MAX_TENSORS];
    for t in 0..model.tensor_count() {
        high[t] = plan.tensors[t].len as i64;
    }
    for s in 0..step_count.min(MAX_OPS) {
        let step = plan.steps[s];
        let Some(deltas) = in_place_deltas(&step.kernel) else { continue };
        let (a, b) = (tix(plan.root[tix(step.inputs[0])]), tix(plan.root[tix(step.output)]));
        if plan.tensors[a].last as usize != s || kept.contains(&(a as u16)) || a == b {
            continue;
        }
        let (in_len, out_len) = (plan.tensors[a].len as i64, plan.tensors[b].len as i64);
        let g = tix(plan.group[a]);
        // The direction that keeps the group's span smallest; the two spans must overlap (no
        // gap a scratch could fall into).
        let mut best: Option<(i64, i64, bool)> = None;
        for (delta, reverse) in [(deltas[0], false), (deltas[1], true)] {
            if delta + out_len < 0 || delta > in_len {
                continue;
            }
            let rel = plan.rel[a] as i64 + delta;
            let span = high[g].max(rel + out_len) - low[g].min(rel);
            if best.is_none_or(|(_, s, _)| span < s) {
                best = Some((delta, span, reverse));
            }
        }
        let Some((delta, _, reverse)) = best else { continue };
        let Ok(rel) = i32::try_from(plan.rel[a] as i64 + delta) else { continue };
        plan.group[b] = g as u16;
        plan.rel[b] = rel;
        low[g] = low[g].min(rel as i64);
        high[g] = high[g].max(rel as i64 + out_len);
        plan.steps[s].in_place = Some((delta as i32, reverse));
    }
}

/// Greedy placement of buffer groups (a group: tensors at fixed offsets from each other, or one
/// scratch buffer), in two orders — largest first, and by first use — keeping the better one;
/// returns the arena size.
fn place_buffers(model: &Model, step_count: usize, plan: &mut Plan) -> usize {
    let by_size = place_in_order(model, step_count, plan, false);
    let by_time = place_in_order(model, step_count, plan, true);
    if by_size < by_time {
        place_in_order(model, step_count, plan, false)
    } else {
        by_time
    }
}

/// Buffer `b` of a plan: tensor `b`'s root buffer when `b < tensors`, else step
/// `b - tensors`'s scratch; its group, offset in the group, and whether it needs bytes.
struct Buffers<'p, 'm> {
    plan: &'p Plan<'m>,
    tensors: usize,
}

impl Buffers<'_, '_> {
    fn get(&self, b: usize) -> Buffer {
        let buffer = match b.checked_sub(self.tensors) {
            None => self.plan.tensors.get(b),
            Some(s) => self.plan.steps.get(s).map(|step| &step.scratch),
        };
        buffer.copied().unwrap_or(Buffer::NONE)
    }

    fn wanted(&self, b: usize) -> bool {
        (b >= self.tensors || self.plan.root.get(b).is_some_and(|&r| r as usize == b)) && self.get(b).used()
    }

    fn unit(&self, b: usize) -> usize {
        if b < self.tensors { self.plan.group.get(b).map_or(b, |&g| g as usize) } else { b }
    }

    fn rel(&self, b: usize) -> i64 {
        if b < self.tensors { self.plan.rel.get(b).map_or(0, |&r| r as i64) } else { 0 }
    }

    fn member(&self, b: usize, u: usize) -> bool {
        self.unit(b) == u && self.wanted(b)
    }
}

#[inline(never)]
fn place_in_order(model: &Model, step_count: usize, plan: &mut Plan, by_time: bool) -> usize {
    let tensors = model.tensor_count();
    let mut order = [0u16; MAX_TENSORS + MAX_OPS];
    let count = (tensors + step_count).min(order.len());
    // The key a unit is ordered by: its largest member, or its first use.
    let key = |bufs: &Buffers, u: usize| -> i64 {
        let members = (0..count).filter(|&b| bufs.member(b, u));
        if by_time {
            -members.map(|b| bufs.get(b).first as i64).min().unwrap_or(0)
        } else {
            members.map(|b| bufs.get(b).len as i64).max().unwrap_or(0)
        }
    };
    let mut n = 0;
    {
        let bufs = Buffers { plan, tensors };
        for u in 0..count {
            if bufs.unit(u) != u || !(0..count).any(|b| bufs.member(b, u)) {
                continue;
            }
            if n >= order.len() {
                break;
            }
            // Insertion sort by key, descending; equal keys keep their index order.
            let k = key(&bufs, u);
            let mut at = n;
            while at > 0 && key(&bufs, order[at - 1] as usize) < k {
                order[at] = order[at - 1];
                at -= 1;
            }
            order[at] = u as u16;
            n += 1;
        }
    }
    let mut arena = 0i64;
    for k in 0..n.min(order.len()) {
        let u = order[k] as usize;
        let base = {
            let bufs = Buffers { plan, tensors };
            let min_rel = (0..count).filter(|&b| bufs.member(b, u)).map(|b| bufs.rel(b)).min().unwrap_or(0);
            let mut base = -min_rel;
            // Move past every placed buffer alive at the same time as a member and in its way.
            'search: loop {
                for m in (0..count).filter(|&b| bufs.member(b, u)) {
                    let (this, at) = (bufs.get(m), base + bufs.rel(m));
                    for &placed in order.iter().take(k) {
                        for o in (0..count).filter(|&b| bufs.member(b, placed as usize)) {
                            let other = bufs.get(o);
                            let (start, end) = (other.offset as i64, other.offset as i64 + other.len as i64);
                            if other.live_with(&this) && start < at + this.len as i64 && at < end {
                                base = end - bufs.rel(m);
                                continue 'search;
                            }
                        }
                    }
                }
                break base;
            }
        };
        for m in 0..count {
            let (is_member, rel) = {
                let bufs = Buffers { plan, tensors };
                (bufs.member(m, u), bufs.rel(m))
            };
            if !is_member {
                continue;
            }
            let offset = (base + rel) as u32;
            let buffer = match m.checked_sub(tensors) {
                None => plan.tensors.get_mut(m),
                Some(s) => plan.steps.get_mut(s).map(|step| &mut step.scratch),
            };
            if let Some(buffer) = buffer {
                buffer.offset = offset;
                arena = arena.max(offset as i64 + buffer.len as i64);
            }
        }
    }
    arena as usize
}

/// Bytes of scratch a step's kernel asks for.
fn step_scratch_bytes(kernel: &Kernel) -> usize {
    match kernel {
        Kernel::Reference(layer) => scratch_bytes(layer),
        Kernel::Conv(c) => fast::conv2d_s8_fast_scratch_bytes(c),
        Kernel::ConvMaxPool(c, p) => fast::conv2d_maxpool_s8_fast_scratch_bytes(c, p),
        Kernel::WinogradMaxPool(c, p) => fast::conv2d_maxpool_s8_winograd_scratch_bytes(c, p),
        Kernel::Conv1ChannelMaxPool(c, p) => fast::conv2d_c1_maxpool_s8_fast_scratch_bytes(c, p),
        Kernel::FullyConnected(f) => fast::fully_connected_s8_fast_scratch_bytes(f),
        Kernel::Depthwise(d) => fast::depthwise_conv2d_s8_fast_scratch_bytes(d),
        Kernel::Add(a) => fast::add_s8_fast_scratch_bytes(a),
        Kernel::View | Kernel::Residual { .. } => 0,
    }
}

/// The step's output and scratch (mutable) and its inputs (shared) out of one arena. The plan
/// keeps them apart; should it not, this is an error, never aliasing: each range lies in the
/// arena, and no input or the scratch meets the output, no input meets the scratch (empty
/// ranges meet nothing).
fn regions(arena: &mut [u8], out: Range<usize>, scratch: Range<usize>, inputs: [Option<Range<usize>>; 2]) -> Result<(&mut [u8], &mut [u8], [&[i8]; 2]), Error> {
    let len = arena.len();
    let inside = |r: &Range<usize>| r.start <= r.end && r.end <= len;
    let apart = |a: &Range<usize>, b: &Range<usize>| a.is_empty() || b.is_empty() || a.end <= b.start || b.end <= a.start;
    let input_ok = |r: &Option<Range<usize>>| r.as_ref().is_none_or(|r| inside(r) && apart(r, &out) && apart(r, &scratch));
    if !(inside(&out) && inside(&scratch) && apart(&out, &scratch) && input_ok(&inputs[0]) && input_ok(&inputs[1])) {
        let end = |r: &Option<Range<usize>>| r.as_ref().map_or(0, |r| r.end);
        return Err(Error::ArenaTooSmall { needed: out.end.max(scratch.end).max(end(&inputs[0])).max(end(&inputs[1])), available: len });
    }
    let base = arena.as_mut_ptr();
    // SAFETY: every range lies in the arena, which this call borrows mutably for the lifetime
    // of the slices; the two mutable ones are disjoint from each other and from every shared
    // one (checked above), so no byte is reachable mutably through two slices or mutably and
    // shared at once.
    unsafe {
        let input = |r: &Option<Range<usize>>| r.as_ref().map_or(&[][..], |r| as_i8(core::slice::from_raw_parts(base.add(r.start), r.len())));
        let inputs = [input(&inputs[0]), input(&inputs[1])];
        let out = core::slice::from_raw_parts_mut(base.add(out.start), out.len());
        let scratch = core::slice::from_raw_parts_mut(base.add(scratch.start), scratch.len());
        Ok((out, scratch, inputs))
    }
}

/// Run an in-place step: its input and output in one span of the arena, its scratch apart.
fn run_in_place_kernel(plan: &Plan, kernel: &Kernel, arena: &mut [u8], input: Range<usize>, output: Range<usize>, scratch: Range<usize>, reverse: bool) -> Result<(), Error> {
    let span = input.start.min(output.start)..input.end.max(output.end);
    let (io, scratch, _) = regions(arena, span.clone(), scratch, [None, None])?;
    let shift = |r: &Range<usize>| r.start - span.start..r.end - span.start;
    let mut io = fast::Io::Shared { io: as_i8_mut(io), input: shift(&input), output: shift(&output), reverse };
    match kernel {
        Kernel::Conv(c) => fast::conv2d_s8_fast_io(c, &mut io, scratch),
        Kernel::Depthwise(d) => fast::depthwise_conv2d_s8_fast_io(d, &mut io, scratch),
        Kernel::Residual { a, aux, x_first } => run_residual(plan, a, *aux, *x_first, &mut io, scratch),
        _ => Err(Error::BadParameter { layer: 0, what: "kernel cannot run in place" }),
    }
}

/// Run a residual block on `io` (X in, the ADD's output out), its conv B and ADD from plan
/// slots `aux` and `aux + 1`.
fn run_residual(plan: &Plan, a: &Conv2d, aux: u8, x_first: bool, io: &mut fast::Io, scratch: &mut [u8]) -> Result<(), Error> {
    let part = |k: usize| plan.steps.get(aux as usize + k).map(|s| &s.kernel);
    let (Some(Kernel::Conv(b)), Some(Kernel::Add(add))) = (part(0), part(1)) else {
        return Err(Error::BadParameter { layer: 0, what: "residual block without its parts" });
    };
    fast::residual_block_s8_fast_io(a, b, add, x_first, io, scratch)
}

/// Run one step's kernel.
fn run_kernel(plan: &Plan, kernel: &Kernel, inputs: [&[i8]; 2], output: &mut [i8], scratch: &mut [u8]) -> Result<(), Error> {
    let [input, input2] = inputs;
    let layer = match kernel {
        Kernel::Reference(layer) => layer,
        Kernel::Conv(c) => return fast::conv2d_s8_fast(c, input, output, scratch),
        Kernel::ConvMaxPool(c, p) => return fast::conv2d_maxpool_s8_fast(c, p, input, output, scratch),
        Kernel::WinogradMaxPool(c, p) => return fast::conv2d_maxpool_s8_winograd(c, p, input, output, scratch),
        Kernel::Conv1ChannelMaxPool(c, p) => return fast::conv2d_c1_maxpool_s8_fast(c, p, input, output, scratch),
        Kernel::FullyConnected(f) => return fast::fully_connected_s8_fast(f, input, output, scratch),
        Kernel::Depthwise(d) => return fast::depthwise_conv2d_s8_fast(d, input, output, scratch),
        Kernel::Add(a) => return fast::add_s8_fast(a, input, input2, output, scratch),
        Kernel::Residual { a, aux, x_first } => return run_residual(plan, a, *aux, *x_first, &mut fast::Io::Apart { input, output }, scratch),
        Kernel::View => return Ok(()),
    };
    match layer {
        Layer::Conv2d(p) => kernels::conv2d_s8(p, input, output, scratch),
        Layer::DepthwiseConv2d(p) => kernels::depthwise_conv2d_s8(p, input, output, scratch),
        Layer::MaxPool2d(p) => kernels::max_pool_s8(p, input, output, scratch),
        Layer::AvgPool2d(p) => kernels::avg_pool_s8(p, input, output, scratch),
        Layer::FullyConnected(p) => kernels::fully_connected_s8(p, input, output, scratch),
        Layer::Add(p) => kernels::add_s8(p, input, input2, output, scratch),
        Layer::Mean(p) => kernels::mean_s8(p, input, output, scratch),
        Layer::Pad(p) => kernels::pad_s8(p, input, output, scratch),
        Layer::Softmax(p) => kernels::softmax_s8(p, input, output, scratch),
        Layer::Reshape { .. } => Ok(()),
    }
}
