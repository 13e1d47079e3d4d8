//! Any bytes: `Model::parse` returns a model or an error, never panics or reads out of bounds;
//! every model it accepts plans and runs (on a constant input) without panicking either.
//!
//! Random mutations almost never carry a valid CRC, so each input is tried twice: as is (the
//! CRC path) and with its CRC field fixed up (the deeper structural checks and the kernels).
#![no_main]

use lepton_nn::format::{crc32, HEADER_LEN};
use lepton_nn::{Engine, Model, NoHook, Step};
use libfuzzer_sys::fuzz_target;

fn exercise(data: &[u8]) {
    let Ok(model) = Model::parse(data) else { return };
    let mut plan = vec![Step::EMPTY; model.layer_count()];
    let Ok(engine) = Engine::new(model, &mut plan) else { return };
    if engine.arena_bytes() > 1 << 20 {
        return;
    }
    let mut arena = vec![0u8; engine.arena_bytes()];
    let Ok(len) = model.input_shape().len() else { return };
    let mut input = vec![0i8; len];
    let pixels = vec![0x80u8; len];
    let _ = model.quantize_input(&pixels, &mut input);
    let _ = engine.run(&input, &mut arena, &mut NoHook);
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    if data.len() >= HEADER_LEN {
        let payload_len = u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize;
        if let Some(payload) = data.get(HEADER_LEN..HEADER_LEN.saturating_add(payload_len)) {
            let mut fixed = data.to_vec();
            fixed[12..16].copy_from_slice(&crc32(payload).to_le_bytes());
            exercise(&fixed);
        }
    }
});
