//! # lepton-nn
//!
//! Lepton's int8 inference engine: the model format and the integer kernels, `no_std`, no heap,
//! no panics on any input. The very same code runs on the host (tests, `lepton eval`) and on the
//! Cortex-M4 firmware. The arithmetic is TensorFlow Lite Micro's (gemmlowp double rounding,
//! fixed-point softmax), so results are bit-exact with TFLM.
//!
//! ```no_run
//! # fn demo(blob: &[u8], input: &[i8]) -> Result<usize, lepton_nn::Error> {
//! use lepton_nn::{Engine, Model, NoHook, Plan};
//! let model = Model::parse(blob)?;             // validates everything, zero-copy
//! let mut plan = Plan::new();                  // the caller owns the plan's storage too
//! let engine = Engine::new(model, &mut plan)?; // decides every kernel and plans the arena, once
//! let mut arena = [0u8; 32 * 1024];            // the caller owns all memory
//! // `input`: the model's int8 input tensor (its scale and zero point are in the tensor table).
//! let result = engine.run(input, &mut arena[..engine.arena_bytes()], &mut NoHook)?;
//! Ok(result.class())
//! # }
//! ```
#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod dsp;
pub mod engine;
pub mod error;
pub mod fixedpoint;
pub mod format;
pub mod kernels;
pub mod protocol;
pub mod types;

pub use engine::{Engine, Inference, NoHook, Placement, Plan, StepHook, StepSpan};
pub use error::Error;
pub use format::{Header, Layer, Model, Op, OpRecord, Section, TensorRecord};
pub use types::{I32Le, Padding, Requant, Shape, WeightLayout};
