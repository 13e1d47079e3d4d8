//! Any bytes: `Model::parse` returns a model or an error, never panics or reads out of bounds.
//! Parse only, so a campaign reaches millions of executions (see `run_model` for the kernels).
#![no_main]

include!("../exercise.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    parse_only(data);
});
