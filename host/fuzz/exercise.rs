// What each importer fuzz target does with its bytes; `host/tests/import_fuzz_corpus.rs`
// includes this file to replay the committed corpus in CI, without nightly or sanitizers.

/// Any bytes as a TFLite file: an error, or a model whose `.lpk` bytes `lepton-nn` parses.
pub fn import_tflite_bytes(data: &[u8]) {
    if let Ok(model) = lepton::import::tflite::import_tflite(data) {
        check_written(model.to_lpk());
    }
}

/// Any bytes as an ONNX file: an error, or a float network (tract loads, binds, declutters;
/// Lepton converts its graph).
pub fn import_onnx_bytes(data: &[u8]) {
    let _ = lepton::import::onnx::parse(data);
}

/// A model the importer wrote must parse (an importer that writes unreadable models is a bug).
fn check_written<E>(lpk: Result<Vec<u8>, E>) {
    if let Ok(bytes) = lpk {
        if let Err(e) = lepton_nn::Model::parse(&bytes) {
            panic!("the importer wrote a model lepton-nn rejects: {e}");
        }
    }
}
