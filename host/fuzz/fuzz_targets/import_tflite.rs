//! Any bytes through `lepton import` of a TFLite file: an error or a valid model, never a panic.
#![no_main]

include!("../exercise.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = import_tflite_bytes(data);
});
