// What each importer fuzz target does with its bytes; `host/tests/import_fuzz_corpus.rs`
// includes this file to replay the committed corpus in CI, without nightly or sanitizers.

/// Any bytes as a TFLite file: an error, or a model whose `.lpk` bytes `lepton-nn` parses.
/// Whether a model came out.
pub fn import_tflite_bytes(data: &[u8]) -> bool {
    match lepton::import::tflite::import_tflite(data) {
        Ok(model) => {
            check_written(model.to_lpk());
            true
        }
        Err(_) => false,
    }
}

/// Any bytes as an ONNX file: an error, or a float network (tract loads, binds, declutters;
/// Lepton converts its graph). Whether a network came out.
pub fn import_onnx_bytes(data: &[u8]) -> bool {
    lepton::import::onnx::parse(data).is_ok()
}

/// A model the importer wrote must parse (an importer that writes unreadable models is a bug).
fn check_written<E>(lpk: Result<Vec<u8>, E>) {
    if let Ok(bytes) = lpk {
        if let Err(e) = lepton_nn::Model::parse(&bytes) {
            panic!("the importer wrote a model lepton-nn rejects: {e}");
        }
    }
}
