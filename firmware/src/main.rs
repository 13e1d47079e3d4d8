//! Lepton firmware for the STM32F405: validates the model in the flash model partition (or the
//! one embedded in the image), then classifies images with `lepton-nn`, timing every layer.
//!
//! Under QEMU (`qemu` feature) images come from a host file over semihosting and results go back
//! to another; on a board (`board` feature) both travel over USART1. Every outcome ends with a
//! distinct exit code (see [`exit`]); a panic or fault never hangs.
#![no_std]
#![no_main]

mod counter;
mod stack;

#[cfg(feature = "board")]
mod link_board;
#[cfg(feature = "qemu")]
mod link_qemu;

use cortex_m_rt::{entry, exception, ExceptionFrame};
use lepton_nn::{Engine, Layer, LayerHook, Model};
use stm32f4xx_hal as _; // device interrupt vectors

#[cfg(feature = "board")]
use defmt_rtt as _;
#[cfg(feature = "qemu")]
use defmt_semihosting as _;

#[cfg(feature = "board")]
use link_board as link;
#[cfg(feature = "qemu")]
use link_qemu as link;

/// Exit codes (QEMU's exit status; on a board the code is logged and the core halts).
pub mod exit {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 2;
    pub const BAD_MODEL: i32 = 3;
    pub const ARENA_TOO_SMALL: i32 = 4;
    pub const IO: i32 = 5;
    pub const INFERENCE: i32 = 6;
    pub const PANIC: i32 = 101;
    pub const HARD_FAULT: i32 = 102;
}

/// Activations + scratch. The MNIST CNN needs 27,040 bytes; the rest is headroom for other models.
const ARENA_BYTES: usize = 48 * 1024;
const MAX_LAYERS: usize = 16;
pub const MAX_LOGITS: usize = 16;

/// The most input bytes an image may have (28x28 grayscale for MNIST).
pub const MAX_INPUT: usize = 28 * 28;

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

/// Instructions (or timer ticks) spent in each layer of the last inference. A step that fuses
/// several layers is charged to its last layer; the others read 0.
struct LayerTimer {
    started: u32,
    per_layer: [u32; MAX_LAYERS],
}

impl LayerHook for LayerTimer {
    fn before_layer(&mut self, _index: usize, _layer: &Layer) {
        self.started = counter::now();
    }
    fn after_layer(&mut self, index: usize, _layer: &Layer, _output: &[i8]) {
        if let Some(slot) = self.per_layer.get_mut(index) {
            *slot = counter::now().wrapping_sub(self.started);
        }
    }
}

/// What one inference sends back.
pub struct Prediction<'a> {
    pub class: u8,
    pub logits: &'a [i8],
    pub instructions: u32,
    pub per_layer: &'a [u32],
}

#[entry]
fn main() -> ! {
    stack::paint();
    counter::start();
    let code = run();
    link::finish(code)
}

fn run() -> i32 {
    let model = match Model::parse(model_bytes()) {
        Ok(m) => m,
        Err(e) => {
            defmt::error!("no valid model in the model partition: {}", defmt::Display2Format(&e));
            return exit::BAD_MODEL;
        }
    };
    let engine = match Engine::new(model) {
        Ok(e) => e,
        Err(e) => {
            defmt::error!("model cannot be planned: {}", defmt::Display2Format(&e));
            return exit::BAD_MODEL;
        }
    };
    if engine.arena_bytes() > ARENA_BYTES || model.layer_count() > MAX_LAYERS {
        defmt::error!("model needs {} arena bytes and {} layers; this firmware has {} and {}", engine.arena_bytes(), model.layer_count(), ARENA_BYTES, MAX_LAYERS);
        return exit::ARENA_TOO_SMALL;
    }
    let input_len = match model.input_shape().len() {
        Ok(n) if n <= MAX_INPUT => n,
        _ => {
            defmt::error!("model input larger than {} bytes", MAX_INPUT);
            return exit::BAD_MODEL;
        }
    };
    defmt::info!("model ok: {} layers, {} bytes, arena {} bytes", model.layer_count(), model.byte_len(), engine.arena_bytes());

    let mut link = match link::Link::open(model.layer_count()) {
        Ok(l) => l,
        Err(code) => return code,
    };
    // SAFETY: the only reference to the arena, taken once.
    let arena: &mut [u8; ARENA_BYTES] = unsafe { &mut *core::ptr::addr_of_mut!(ARENA) };
    let arena = &mut arena[..engine.arena_bytes()];
    let mut pixels = [0u8; MAX_INPUT];
    let mut input = [0i8; MAX_INPUT];
    let mut images = 0u32;
    loop {
        match link.read_image(&mut pixels[..input_len]) {
            Ok(true) => {}
            Ok(false) => break,
            Err(code) => return code,
        }
        if model.quantize_input(&pixels[..input_len], &mut input[..input_len]).is_err() {
            return exit::BAD_MODEL;
        }
        let mut timer = LayerTimer { started: 0, per_layer: [0; MAX_LAYERS] };
        counter::icount_start();
        let t0 = counter::now();
        let result = infer(&engine, &input[..input_len], arena, &mut timer);
        let instructions = counter::now().wrapping_sub(t0);
        counter::icount_stop();
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                defmt::error!("inference failed: {}", defmt::Display2Format(&e));
                return exit::INFERENCE;
            }
        };
        let prediction = Prediction { class: result.class() as u8, logits: result.logits, instructions, per_layer: &timer.per_layer[..model.layer_count()] };
        if let Some(p) = result.probabilities {
            let confidence = (p[prediction.class as usize] as i32 + 128) as f32 / 256.0;
            defmt::debug!("image {}: class {} ({}%)", images, prediction.class, micromath::F32Ext::round(confidence * 100.0));
        }
        if let Err(code) = link.write_result(&prediction) {
            return code;
        }
        images += 1;
    }
    let stack_peak = stack::peak_bytes();
    defmt::info!("{} images, stack peak {} bytes", images, stack_peak);
    match link.write_summary(stack_peak as u32, engine.arena_bytes() as u32, model.byte_len() as u32) {
        Ok(()) => exit::OK,
        Err(code) => code,
    }
}

static mut ARENA: [u8; ARENA_BYTES] = [0; ARENA_BYTES];

/// One inference. Kept out of line so the inference code (everything `lepton-nn` inlines into
/// it) is one symbol whose size `cargo xtask bench` reports.
#[inline(never)]
fn infer<'a>(engine: &Engine, input: &[i8], arena: &'a mut [u8], timer: &mut LayerTimer) -> Result<lepton_nn::Inference<'a>, lepton_nn::Error> {
    engine.run(input, arena, timer)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    link::finish(exit::PANIC)
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    defmt::error!("hard fault at pc {:#010x}", frame.pc());
    link::finish(exit::HARD_FAULT)
}
