//! Any bytes through `lepton import` of an ONNX file (tract's loader and Lepton's converter): an
//! error or a float network, never a panic.
#![no_main]

include!("../exercise.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = import_onnx_bytes(data);
});
