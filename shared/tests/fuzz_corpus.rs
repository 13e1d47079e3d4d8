//! The committed fuzzing corpus (`shared/fuzz/corpus/`), replayed as an ordinary test: every
//! input through the same code as the fuzz targets, without nightly or sanitizers.

include!("../fuzz/exercise.rs");

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn the_parse_corpus_never_panics() {
    let inputs = corpus("parse_model");
    assert!(inputs.len() >= 100, "only {} corpus inputs", inputs.len());
    let accepted: usize = inputs.iter().map(|d| parse_only(d)).sum();
    // The corpus reaches past the CRC check: some inputs are whole valid models.
    assert!(accepted > 0, "no corpus input parses");
}

#[test]
fn the_run_corpus_never_panics() {
    let inputs = corpus("run_model");
    assert!(inputs.len() >= 100, "only {} corpus inputs", inputs.len());
    let ran: usize = inputs.iter().map(|d| parse_and_run(d)).sum();
    assert!(ran > 0, "no corpus input runs");
}
