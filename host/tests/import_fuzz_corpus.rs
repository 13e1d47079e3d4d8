//! The importers' committed fuzzing corpus (`host/fuzz/corpus/`), replayed as an ordinary test:
//! every input through the same code as the fuzz targets (`host/fuzz/exercise.rs`), without
//! nightly or sanitizers. A panic anywhere (tract's loaders, Lepton's converters, the written
//! model failing to parse) fails the test.

include!("../fuzz/exercise.rs");

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn the_tflite_import_corpus_never_panics() {
    let inputs = corpus("import_tflite");
    assert!(inputs.len() >= 50, "only {} corpus inputs", inputs.len());
    let imported = inputs.iter().filter(|d| import_tflite_bytes(d)).count();
    // The corpus reaches past the flatbuffer checks: some inputs are whole models.
    assert!(imported > 0, "no corpus input imports");
}

#[test]
fn the_onnx_import_corpus_never_panics() {
    let inputs = corpus("import_onnx");
    assert!(inputs.len() >= 50, "only {} corpus inputs", inputs.len());
    let imported = inputs.iter().filter(|d| import_onnx_bytes(d)).count();
    assert!(imported > 0, "no corpus input imports");
}

/// Found by fuzzing: an ONNX Squeeze whose axis is out of range makes tract's shape inference
/// assert. The importer reports it as an error that names tract, and prints no panic.
#[test]
fn a_tract_panic_on_a_malformed_graph_is_an_error() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/import_onnx");
    let bytes = std::fs::read(dir.join("regression-squeeze-axis")).unwrap();
    let e = lepton::import::onnx::parse(&bytes).unwrap_err();
    assert!(format!("{e:#}").contains("tract failed"), "{e:#}");
}

/// Found by fuzzing: an operator whose opcode index is past the operator-code table (the
/// flatbuffer vector's `get` asserts): now a typed error.
#[test]
fn an_opcode_index_out_of_range_is_an_error() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/import_tflite");
    let bytes = std::fs::read(dir.join("regression-opcode-index")).unwrap();
    let e = lepton::import::tflite::import_tflite(&bytes).unwrap_err();
    assert!(format!("{e:#}").contains("out of range"), "{e:#}");
}
