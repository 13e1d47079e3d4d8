//! Lepton firmware for the STM32F405: validates the model in the flash model partition (or the
//! one embedded in the image), plans it once, then runs inputs through `lepton-nn`, timing every
//! step of the plan.
//!
//! Under QEMU (`qemu` feature) inputs come from a host file over semihosting and results go back
//! to another; on a board (`board` feature) both travel over USART1. The frames are
//! `lepton_nn::protocol`'s either way. Every outcome ends with a distinct exit code
//! (`lepton_nn::protocol::Exit`); a panic or fault never hangs.
#![no_std]
#![no_main]
// The no-panic proof build leaves the link, logging and stack paint out.
#![cfg_attr(feature = "no-panic", allow(unused))]

#[cfg(all(feature = "qemu", feature = "board"))]
compile_error!("features `qemu` and `board` exclude each other: build the board firmware with `--no-default-features --features board`");
#[cfg(not(any(feature = "qemu", feature = "board")))]
compile_error!("enable exactly one of the features `qemu` (default) and `board`");

mod counter;
mod stack;

#[cfg(feature = "board")]
mod link_board;
#[cfg(feature = "qemu")]
mod link_qemu;

use cortex_m_rt::{entry, exception, ExceptionFrame};
use lepton_nn::protocol::{Exit, Hello, ResultFrame, Summary, MAX_LOGITS, PROTOCOL_VERSION};
use lepton_nn::format::MAX_OPS;
use lepton_nn::{Engine, Model, Plan, StepHook, StepSpan};
use stm32f4xx_hal as _; // device interrupt vectors

#[cfg(feature = "board")]
use defmt_rtt as _;
// The logger's entry points are exported symbols, kept even when nothing logs: the no-panic
// proof links none (its code does not log).
#[cfg(all(feature = "qemu", not(feature = "no-panic")))]
use defmt_semihosting as _;

#[cfg(feature = "board")]
use link_board as link;
#[cfg(feature = "qemu")]
use link_qemu as link;

/// Activations + scratch: what the SRAM holds beside the plan, the stack and the statics (the
/// seed MNIST CNN's plan needs 9,315 bytes). Inputs are read straight into the arena.
const ARENA_BYTES: usize = 88 * 1024;

#[cfg(not(feature = "embedded-model"))]
fn model_bytes() -> &'static [u8] {
    extern "C" {
        static _model_partition_start: u8;
        static _model_partition_len: u8;
    }
    // SAFETY: the linker script defines the partition; flash is always readable.
    unsafe {
        let start = &_model_partition_start as *const u8;
        let len = &_model_partition_len as *const u8 as usize;
        core::slice::from_raw_parts(start, len)
    }
}

#[cfg(feature = "embedded-model")]
fn model_bytes() -> &'static [u8] {
    static MODEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/model.lpk"));
    MODEL
}

/// Instructions (or timer ticks) spent in each step of the last inference.
struct StepTimer {
    started: u32,
    per_step: [u32; MAX_OPS],
}

impl StepHook for StepTimer {
    // Out of line, so the step markers leave the engine's inlined loop as it was.
    #[inline(never)]
    fn before_step(&mut self, _step: StepSpan) {
        counter::icount_step_begin();
        self.started = counter::now();
    }
    #[inline(never)]
    fn after_step(&mut self, step: StepSpan, _output: &[i8]) {
        let elapsed = counter::now().wrapping_sub(self.started);
        counter::icount_step_end();
        if let Some(slot) = self.per_step.get_mut(step.index) {
            *slot = elapsed;
        }
    }
}

#[cfg(not(feature = "no-panic"))]
#[entry]
fn main() -> ! {
    stack::paint();
    counter::start();
    let code = run();
    link::finish(code)
}

/// The no-panic proof (feature `no-panic`): the inference path alone — the model in the
/// partition parsed, planned and run on an input of zeros, by the very functions [`run`]
/// calls — with a panic handler that calls a symbol defined nowhere. The linker drops every
/// function nothing calls, so this links exactly when no panic is reachable from
/// [`parse`], [`plan_model`] and [`infer`]. Logging and the link are left out (they are not
/// the engine); the image is for linking, not for running.
#[cfg(feature = "no-panic")]
#[entry]
fn main() -> ! {
    counter::start();
    // SAFETY: the only references to the plan and the arena, taken once.
    let (plan, arena) = unsafe { (&mut *core::ptr::addr_of_mut!(PLAN), &mut *core::ptr::addr_of_mut!(ARENA)) };
    if let Ok(model) = parse(model_bytes()) {
        if let Ok(engine) = plan_model(model, plan) {
            if let Some(arena) = arena.get_mut(..engine.arena_bytes()) {
                let mut timer = StepTimer { started: 0, per_step: [0; MAX_OPS] };
                let _ = infer(&engine, arena, &mut timer);
            }
        }
    }
    loop {
        cortex_m::asm::wfi();
    }
}

static mut ARENA: [u8; ARENA_BYTES] = [0; ARENA_BYTES];
static mut PLAN: Plan<'static> = Plan::new();

#[cfg(not(feature = "no-panic"))]
fn run() -> Exit {
    let model = match parse(model_bytes()) {
        Ok(m) => m,
        Err(e) => {
            defmt::error!("no valid model in the model partition: {}", defmt::Display2Format(&e));
            return Exit::BadModel;
        }
    };
    // SAFETY: the only reference to the plan storage, taken once.
    let plan: &'static mut Plan<'static> = unsafe { &mut *core::ptr::addr_of_mut!(PLAN) };
    let engine = match plan_model(model, plan) {
        Ok(e) => e,
        Err(lepton_nn::Error::PlanTooSmall { needed, available }) => {
            defmt::error!("model needs up to {} plan steps; this firmware has {}", needed, available);
            return Exit::ArenaTooSmall;
        }
        Err(e) => {
            defmt::error!("model cannot be planned: {}", defmt::Display2Format(&e));
            return Exit::BadModel;
        }
    };
    if engine.arena_bytes() > ARENA_BYTES {
        defmt::error!("model needs {} arena bytes; this firmware has {}", engine.arena_bytes(), ARENA_BYTES);
        return Exit::ArenaTooSmall;
    }
    defmt::info!("model ok: {} ops in {} steps, {} bytes, arena {} bytes", model.op_count(), engine.step_count(), model.byte_len(), engine.arena_bytes());
    let separate_output = model.output_tensor() != model.logits_tensor();
    if engine.logits_len() > MAX_LOGITS || engine.output_len() > MAX_LOGITS {
        defmt::error!("model has {} logits and {} outputs; a result frame carries at most {}", engine.logits_len(), engine.output_len(), MAX_LOGITS);
        return Exit::ArenaTooSmall;
    }
    let hello = Hello {
        version: PROTOCOL_VERSION,
        steps: engine.step_count() as u16,
        logits: engine.logits_len() as u16,
        outputs: if separate_output { engine.output_len() as u16 } else { 0 },
        input_bytes: engine.input_range().len() as u32,
    };
    let mut link = match link::Link::open(&hello) {
        Ok(l) => l,
        Err(code) => return code,
    };
    // SAFETY: the only reference to the arena, taken once.
    let arena: &mut [u8; ARENA_BYTES] = unsafe { &mut *core::ptr::addr_of_mut!(ARENA) };
    let arena = &mut arena[..engine.arena_bytes()];
    let input_at = engine.input_range();
    let mut count = 0u32;
    loop {
        match link.read_input(&mut arena[input_at.clone()]) {
            Ok(true) => {}
            Ok(false) => break,
            Err(code) => return code,
        }
        let mut timer = StepTimer { started: 0, per_step: [0; MAX_OPS] };
        counter::icount_start();
        let t0 = counter::now();
        let result = infer(&engine, arena, &mut timer);
        let instructions = counter::now().wrapping_sub(t0);
        counter::icount_stop();
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                defmt::error!("inference failed: {}", defmt::Display2Format(&e));
                return Exit::Inference;
            }
        };
        let frame = ResultFrame {
            class: result.class() as u16,
            logits: result.logits,
            outputs: if separate_output { result.output() } else { &[] },
            instructions,
            per_step: &timer.per_step[..engine.step_count()],
        };
        if let Some(p) = result.probabilities {
            let confidence = (p.get(frame.class as usize).copied().unwrap_or(i8::MIN) as i32 + 128) as f32 / 256.0;
            defmt::debug!("input {}: class {} ({}%)", count, frame.class, micromath::F32Ext::round(confidence * 100.0));
        }
        if let Err(code) = link.send_result(&frame) {
            return code;
        }
        count += 1;
    }
    let stack_peak = stack::peak_bytes();
    defmt::info!("{} inputs, stack peak {} bytes", count, stack_peak);
    let summary = Summary { stack_peak_bytes: stack_peak as u32, arena_bytes: engine.arena_bytes() as u32, model_bytes: model.byte_len() as u32 };
    match link.send_summary(&summary) {
        Ok(()) => Exit::Ok,
        Err(code) => code,
    }
}

/// Model parsing, out of line: one of the roots of the inference call graph that `cargo xtask
/// bench` measures and checks for reachable panics (with [`plan_model`] and [`infer`]).
#[inline(never)]
fn parse(bytes: &'static [u8]) -> Result<Model<'static>, lepton_nn::Error> {
    Model::parse(bytes)
}

/// Planning (Prepare), out of line for the same reason.
#[inline(never)]
fn plan_model(model: Model<'static>, plan: &'static mut Plan<'static>) -> Result<Engine<'static, 'static>, lepton_nn::Error> {
    Engine::new(model, plan)
}

/// One inference. Kept out of line: the root of the call graph whose code `cargo xtask bench`
/// measures (everything reachable from here).
#[inline(never)]
fn infer<'a>(engine: &Engine, arena: &'a mut [u8], timer: &mut StepTimer) -> Result<lepton_nn::Inference<'a>, lepton_nn::Error> {
    engine.run_in_place(arena, timer)
}

#[cfg(not(feature = "no-panic"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    link::finish(Exit::Panic)
}

/// The link-time proof that no panic is reachable (feature `no-panic`, see its `main`): this
/// handler calls a symbol that exists nowhere, so the link fails while any path to a panic
/// remains. `cargo xtask no-panic` lists those on the inference path.
#[cfg(feature = "no-panic")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    extern "Rust" {
        fn a_panic_is_reachable_in_the_firmware() -> !;
    }
    unsafe { a_panic_is_reachable_in_the_firmware() }
}

#[cfg(not(feature = "no-panic"))]
#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    defmt::error!("hard fault at pc {:#010x}", frame.pc());
    link::finish(Exit::HardFault)
}

#[cfg(feature = "no-panic")]
#[exception]
unsafe fn HardFault(_: &ExceptionFrame) -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}
