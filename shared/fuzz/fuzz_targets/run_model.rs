//! Any bytes: every model `Model::parse` accepts plans (optimized and reference) and runs
//! without panicking.
#![no_main]

include!("../exercise.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    parse_and_run(data);
});
