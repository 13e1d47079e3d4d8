//! Every malformed model is a typed error, never a panic or an out-of-bounds read; every byte
//! that defines a model is covered by its CRC.

use lepton_nn::format::{model_crc, HEADER_LEN, OP_RECORD_LEN, TENSOR_RECORD_LEN};
use lepton_nn::{Engine, Error, Model, NoHook, Plan};
use lepton_tests::{model_from_vectors, vectors};

/// The seed CNN of the TFLM vectors: 10 tensors, 9 ops.
fn blob() -> Vec<u8> {
    model_from_vectors(&vectors()).to_lpk().unwrap()
}

const TENSORS: usize = 10;

/// Patch bytes at `at` and recompute the CRC, so the parser's deeper checks are reached.
fn patched(mut b: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    b[at..at + bytes.len()].copy_from_slice(bytes);
    let crc = model_crc(&b);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

fn tensor_at(t: usize) -> usize {
    HEADER_LEN + t * TENSOR_RECORD_LEN
}

fn op_at(i: usize) -> usize {
    HEADER_LEN + TENSORS * TENSOR_RECORD_LEN + i * OP_RECORD_LEN
}

fn parse(b: &[u8]) -> Result<(), Error> {
    Model::parse(b).map(|_| ())
}

#[test]
fn the_reference_model_parses() {
    let b = blob();
    let model = Model::parse(&b).unwrap();
    assert_eq!((model.tensor_count(), model.op_count()), (TENSORS, 9));
    assert_eq!(model.byte_len(), b.len());
    assert_eq!(model.logits_tensor(), 8);
    assert_eq!(model.output_tensor(), 9);
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
    assert_eq!(parse(&b).unwrap_err(), Error::BadMagic);
    let mut b = blob();
    b[6] = 40;
    assert_eq!(parse(&b).unwrap_err(), Error::BadHeaderLength(40));
}

/// A version 1 file (the chain format) is refused with a message that says how to regenerate it.
#[test]
fn version_1_models_are_refused_with_advice() {
    let mut b = blob();
    b[4] = 1;
    let e = parse(&b).unwrap_err();
    assert_eq!(
        e,
        Error::UnsupportedVersion {
            found: 1,
            supported: 2
        }
    );
    assert!(
        e.to_string()
            .contains("re-run `lepton quantize` or `lepton import`"),
        "{e}"
    );
}

/// Every single-bit flip is rejected: the CRC covers bytes 16.. (the rest of the header and the
/// payload), and bytes 0..16 are checked field by field. Every bit of the header and the tables,
/// and of every 61st byte of the data sections (CRC-32 catches any single-bit error; the
/// sample keeps the test fast).
#[test]
fn every_single_bit_flip_is_rejected() {
    let b = blob();
    let mut accepted = Vec::new();
    for at in (0..op_at(9)).chain((op_at(9)..b.len()).step_by(61)) {
        for bit in 0..8 {
            let mut c = b.clone();
            c[at] ^= 1 << bit;
            if Model::parse(&c).is_ok() {
                accepted.push((at, bit));
            }
        }
    }
    assert!(
        accepted.is_empty(),
        "{} flips accepted, first {:?}",
        accepted.len(),
        &accepted[..accepted.len().min(10)]
    );
}

#[test]
fn header_fields_after_the_crc_are_covered() {
    let b = blob();
    for at in 16..HEADER_LEN {
        let mut c = b.clone();
        c[at] ^= 0x01;
        assert!(
            matches!(parse(&c), Err(Error::CrcMismatch { .. })),
            "byte {at}: {:?}",
            parse(&c)
        );
    }
}

#[test]
fn a_payload_length_smaller_than_the_tables_says_so() {
    let b = blob();
    let c = patched(b[..HEADER_LEN + 200].to_vec(), 8, &200u32.to_le_bytes());
    let e = parse(&c).unwrap_err();
    assert_eq!(
        e,
        Error::PayloadTooShort {
            needed: TENSORS * TENSOR_RECORD_LEN + 9 * OP_RECORD_LEN,
            declared: 200
        }
    );
    assert!(
        e.to_string().contains("declares a payload of 200 bytes"),
        "{e}"
    );
}

#[test]
fn reserved_fields_must_be_zero() {
    assert_eq!(
        parse(&patched(blob(), 26, &[1])).unwrap_err(),
        Error::Reserved {
            what: "header bytes 24..32"
        }
    );
    assert_eq!(
        parse(&patched(blob(), tensor_at(3) + 6, &[1])).unwrap_err(),
        Error::Reserved {
            what: "tensor record bytes 6..8"
        }
    );
    assert_eq!(
        parse(&patched(blob(), op_at(4) + 90, &[7])).unwrap_err(),
        Error::Reserved {
            what: "op record bytes 80..96"
        }
    );
}

#[test]
fn meaningless_scales_and_zero_points() {
    for scale in [f32::NAN, f32::INFINITY, 0.0, -0.5] {
        let e = parse(&patched(blob(), tensor_at(2) + 8, &scale.to_le_bytes())).unwrap_err();
        assert_eq!(
            e,
            Error::BadTensor {
                tensor: 2,
                what: "scale not a positive finite number"
            },
            "{scale}"
        );
    }
    let e = parse(&patched(blob(), tensor_at(2) + 12, &200i32.to_le_bytes())).unwrap_err();
    assert_eq!(
        e,
        Error::BadTensor {
            tensor: 2,
            what: "zero point outside int8"
        }
    );
}

#[test]
fn sizes_beyond_any_device_are_refused_before_anything_is_allocated() {
    // 65535 x 65535 x 65535 input: refused by the parser, whatever follows.
    let mut shape = Vec::new();
    for _ in 0..3 {
        shape.extend(u16::MAX.to_le_bytes());
    }
    let e = parse(&patched(blob(), tensor_at(0), &shape)).unwrap_err();
    assert!(
        matches!(e, Error::TensorTooLarge { tensor: 0, .. }),
        "{e:?}"
    );
}

#[test]
fn unknown_op() {
    assert_eq!(
        parse(&patched(blob(), op_at(3), &[99])).unwrap_err(),
        Error::UnknownOp { layer: 3, op: 99 }
    );
}

#[test]
fn graph_structure_errors() {
    // Op 2 reads tensor 5, which op 4 writes later.
    assert_eq!(
        parse(&patched(blob(), op_at(2) + 8, &5u16.to_le_bytes())).unwrap_err(),
        Error::NotTopological { op: 2, tensor: 5 }
    );
    // Op 2 writes tensor 2, which op 1 wrote.
    assert_eq!(
        parse(&patched(blob(), op_at(2) + 12, &2u16.to_le_bytes())).unwrap_err(),
        Error::TensorWrittenTwice { op: 2, tensor: 2 }
    );
    // A tensor that does not exist.
    assert_eq!(
        parse(&patched(blob(), op_at(2) + 8, &77u16.to_le_bytes())).unwrap_err(),
        Error::BadTensorRef {
            op: Some(2),
            tensor: 77
        }
    );
    // A second input for an op that takes one.
    assert!(matches!(
        parse(&patched(blob(), op_at(2) + 10, &1u16.to_le_bytes())),
        Err(Error::BadParameter { layer: 2, .. })
    ));
    // The model output names a tensor that does not exist.
    assert_eq!(
        parse(&patched(blob(), 22, &40u16.to_le_bytes())).unwrap_err(),
        Error::BadTensorRef {
            op: None,
            tensor: 40
        }
    );
}

#[test]
fn shapes_that_do_not_fit() {
    // Tensor 3 (conv2's output, 11x11x64) claimed 10x11x64: conv2's window no longer produces it.
    let b = patched(blob(), tensor_at(3), &10u16.to_le_bytes());
    assert!(
        matches!(parse(&b), Err(Error::ShapeMismatch { layer: 2, .. })),
        "{:?}",
        parse(&b)
    );
}

#[test]
fn sections_out_of_range_misaligned_or_overlapping() {
    let b = blob();
    let model = Model::parse(&b).unwrap();
    let payload_len = b.len() - HEADER_LEN;
    // Weights of op 6 (fc1) past the payload.
    let c = patched(
        b.clone(),
        op_at(6) + 48,
        &(payload_len as u32 - 100).to_le_bytes(),
    );
    assert_eq!(
        parse(&c).unwrap_err(),
        Error::SectionOutOfRange {
            layer: 6,
            section: "weights"
        }
    );
    // Offset + length overflowing.
    let c = patched(b.clone(), op_at(6) + 48, &(u32::MAX & !3).to_le_bytes());
    assert_eq!(
        parse(&c).unwrap_err(),
        Error::SectionOutOfRange {
            layer: 6,
            section: "weights"
        }
    );
    // Misaligned.
    let w = model.op_record(6).weights.offset;
    let c = patched(b.clone(), op_at(6) + 48, &(w + 1).to_le_bytes());
    assert_eq!(
        parse(&c).unwrap_err(),
        Error::SectionMisaligned {
            layer: 6,
            section: "weights"
        }
    );
    // Overlapping the tables, and an earlier op's sections.
    let c = patched(b.clone(), op_at(0) + 48, &16u32.to_le_bytes());
    assert_eq!(
        parse(&c).unwrap_err(),
        Error::SectionOverlap {
            layer: 0,
            section: "weights"
        }
    );
    let earlier = model.op_record(0).bias.offset;
    let c = patched(b.clone(), op_at(2) + 56, &earlier.to_le_bytes());
    assert_eq!(
        parse(&c).unwrap_err(),
        Error::SectionOverlap {
            layer: 2,
            section: "bias"
        }
    );
    // A bias length that does not match the channel count.
    let c = patched(b, op_at(0) + 60, &4u32.to_le_bytes());
    assert_eq!(
        parse(&c).unwrap_err(),
        Error::SectionOutOfRange {
            layer: 0,
            section: "bias"
        }
    );
}

#[test]
fn bad_parameters() {
    // Zero stride.
    assert!(matches!(
        parse(&patched(blob(), op_at(1) + 4, &[0])),
        Err(Error::BadParameter { layer: 1, .. })
    ));
    // act_min > act_max.
    assert!(matches!(
        parse(&patched(blob(), op_at(0) + 6, &[100, 0])),
        Err(Error::BadParameter { layer: 0, .. })
    ));
    // Softmax shift that would overflow int32.
    assert!(matches!(
        parse(&patched(blob(), op_at(8) + 20, &31i32.to_le_bytes())),
        Err(Error::BadParameter { layer: 8, .. })
    ));
    // Parameters an op does not take.
    assert!(matches!(
        parse(&patched(blob(), op_at(0) + 16, &1i32.to_le_bytes())),
        Err(Error::BadParameter { layer: 0, .. })
    ));
    // Zero ops.
    assert_eq!(
        parse(&patched(blob(), 18, &0u16.to_le_bytes())).unwrap_err(),
        Error::LayerCount(0)
    );
}

#[test]
fn accumulator_overflow_is_refused() {
    // A bias near i32::MAX in conv2 makes the worst-case accumulator overflow.
    let b = blob();
    let model = Model::parse(&b).unwrap();
    let bias_at = HEADER_LEN + model.op_record(2).bias.offset as usize;
    let c = patched(b, bias_at, &(i32::MAX - 10).to_le_bytes());
    assert_eq!(
        parse(&c).unwrap_err(),
        Error::AccumulatorOverflow { layer: 2 }
    );
}

/// Every byte of the header and the tables set to several values (CRC fixed up): the parser
/// either refuses or accepts, and an accepted model plans and runs without panicking.
#[test]
fn mutated_tables_never_panic() {
    let b = blob();
    let tables = op_at(9);
    let mut accepted = 0;
    for at in 0..tables {
        for v in [
            0u8,
            1,
            2,
            3,
            0x7F,
            0x80,
            0xFF,
            b[at].wrapping_add(1),
            b[at].wrapping_sub(1),
        ] {
            let c = if (12..16).contains(&at) {
                let mut c = b.clone();
                c[at] = v;
                c
            } else {
                patched(b.clone(), at, &[v])
            };
            if let Ok(model) = Model::parse(&c) {
                accepted += 1;
                let mut plan = Box::new(Plan::new());
                let engine = Engine::new(model, &mut plan).unwrap();
                let mut arena = vec![0u8; engine.arena_bytes()];
                let input = vec![0i8; model.input_shape().len().unwrap()];
                let _ = engine.run(&input, &mut arena, &mut NoHook);
            }
        }
    }
    assert!(
        accepted > 0,
        "some mutations (e.g. of scales or activation bounds) are valid models"
    );
}
