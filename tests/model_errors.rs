//! Every malformed model is a typed error, never a panic or an out-of-bounds read.

use lepton_nn::format::{crc32, HEADER_LEN, RECORD_LEN};
use lepton_nn::{Engine, Error, Model, NoHook, Step};
use lepton_tests::{model_from_vectors, vectors};

fn blob() -> Vec<u8> {
    model_from_vectors(&vectors()).to_lpk().unwrap()
}

/// Patch bytes at `at` and recompute the CRC, so the parser's deeper checks are reached.
fn patched(mut b: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    b[at..at + bytes.len()].copy_from_slice(bytes);
    let crc = crc32(&b[HEADER_LEN..]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

fn record_at(layer: usize) -> usize {
    HEADER_LEN + layer * RECORD_LEN
}

#[test]
fn the_reference_model_parses() {
    let b = blob();
    let model = Model::parse(&b).unwrap();
    assert_eq!(model.layer_count(), 9);
    assert_eq!(model.byte_len(), b.len());
}

#[test]
fn every_truncation_is_an_error() {
    let b = blob();
    for len in 0..b.len() {
        match Model::parse(&b[..len]) {
            Err(Error::Truncated { .. }) => {}
            other => panic!("prefix of {len} bytes: {other:?}"),
        }
    }
}

#[test]
fn trailing_bytes_are_ignored() {
    let mut b = blob();
    b.extend(std::iter::repeat_n(0xFF, 4096)); // erased flash after the model
    assert!(Model::parse(&b).is_ok());
}

#[test]
fn bad_magic_version_and_header_length() {
    let mut b = blob();
    b[0] = b'X';
    assert_eq!(Model::parse(&b).unwrap_err(), Error::BadMagic);
    let mut b = blob();
    b[4] = 2;
    assert_eq!(Model::parse(&b).unwrap_err(), Error::UnsupportedVersion { found: 2, supported: 1 });
    let mut b = blob();
    b[6] = 40;
    assert_eq!(Model::parse(&b).unwrap_err(), Error::BadHeaderLength(40));
}

#[test]
fn any_flipped_payload_bit_fails_the_crc() {
    let b = blob();
    for at in (HEADER_LEN..b.len()).step_by(97) {
        let mut c = b.clone();
        c[at] ^= 0x10;
        assert!(matches!(Model::parse(&c), Err(Error::CrcMismatch { .. })), "byte {at}");
    }
}

#[test]
fn unknown_op() {
    let b = patched(blob(), record_at(3), &[99]);
    assert_eq!(Model::parse(&b).unwrap_err(), Error::UnknownOp { layer: 3, op: 99 });
}

#[test]
fn shapes_that_do_not_chain() {
    // Layer 2 (conv) claims a 12x12 input after a pool that produces 13x13.
    let b = patched(blob(), record_at(2) + 8, &12u16.to_le_bytes());
    assert!(matches!(Model::parse(&b), Err(Error::ShapeMismatch { layer: 2, .. })), "{:?}", Model::parse(&b));
    // Layer 0 claims a 27x26 output.
    let b = patched(blob(), record_at(0) + 16, &27u16.to_le_bytes());
    assert!(matches!(Model::parse(&b), Err(Error::ShapeMismatch { layer: 0, .. })));
}

#[test]
fn sections_out_of_range() {
    let b = blob();
    let payload_len = b.len() - HEADER_LEN;
    // Weights offset of layer 6 past the payload.
    let c = patched(b.clone(), record_at(6) + 48, &(payload_len as u32 - 100).to_le_bytes());
    assert_eq!(Model::parse(&c).unwrap_err(), Error::SectionOutOfRange { layer: 6, section: "weights" });
    // Offset + length overflowing u32 arithmetic.
    let c = patched(b.clone(), record_at(6) + 48, &u32::MAX.to_le_bytes());
    assert_eq!(Model::parse(&c).unwrap_err(), Error::SectionOutOfRange { layer: 6, section: "weights" });
    // Bias length that does not match the channel count.
    let c = patched(b, record_at(0) + 60, &4u32.to_le_bytes());
    assert_eq!(Model::parse(&c).unwrap_err(), Error::SectionOutOfRange { layer: 0, section: "bias" });
}

#[test]
fn bad_parameters() {
    // Zero stride.
    let b = patched(blob(), record_at(1) + 4, &[0]);
    assert!(matches!(Model::parse(&b), Err(Error::BadParameter { layer: 1, .. })));
    // act_min > act_max.
    let b = patched(blob(), record_at(0) + 6, &[100, 0]);
    assert!(matches!(Model::parse(&b), Err(Error::BadParameter { layer: 0, .. })));
    // Softmax shift that would overflow int32.
    let b = patched(blob(), record_at(8) + 40, &31i32.to_le_bytes());
    assert!(matches!(Model::parse(&b), Err(Error::BadParameter { layer: 8, .. })));
    // Zero layers and too many layers.
    let b = patched(blob(), 16, &0u16.to_le_bytes());
    assert_eq!(Model::parse(&b).unwrap_err(), Error::LayerCount(0));
}

#[test]
fn accumulator_overflow_is_refused() {
    // A bias near i32::MAX in conv2 makes the worst-case accumulator overflow.
    let b = blob();
    let model = Model::parse(&b).unwrap();
    let bias_at = HEADER_LEN + model.record(2).bias.offset as usize;
    let c = patched(b, bias_at, &(i32::MAX - 10).to_le_bytes());
    assert_eq!(Model::parse(&c).unwrap_err(), Error::AccumulatorOverflow { layer: 2 });
}

/// Every byte of the header and layer table set to several values (CRC fixed up): the parser
/// either refuses or accepts, and an accepted model runs without panicking.
#[test]
fn mutated_tables_never_panic() {
    let b = blob();
    let tables = HEADER_LEN + 9 * RECORD_LEN;
    let mut accepted = 0;
    for at in 0..tables {
        for v in [0u8, 1, 2, 3, 0x7F, 0x80, 0xFF, b[at].wrapping_add(1), b[at].wrapping_sub(1)] {
            let c = if (12..16).contains(&at) { let mut c = b.clone(); c[at] = v; c } else { patched(b.clone(), at, &[v]) };
            if let Ok(model) = Model::parse(&c) {
                accepted += 1;
                let mut plan = vec![Step::EMPTY; model.layer_count()];
                let engine = Engine::new(model, &mut plan).unwrap();
                if engine.arena_bytes() <= 1 << 20 {
                    let mut arena = vec![0u8; engine.arena_bytes()];
                    let input = vec![0i8; model.input_shape().len().unwrap()];
                    let _ = engine.run(&input, &mut arena, &mut NoHook);
                }
            }
        }
    }
    assert!(accepted > 0, "some mutations (e.g. of scales or unused fields) are valid models");
}
