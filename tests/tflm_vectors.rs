//! `lepton-nn` against TensorFlow Lite Micro, bit for bit: every layer of the 20 cases that carry
//! intermediates, logits and softmax of all 100 cases, the worked requantization examples, and
//! the TFLite import against the JSON-built model.

use lepton::import::tflite::import_tflite;
use lepton::lpk::arithmetic::{effective_scale, quantize_multiplier, softmax_params};
use lepton_nn::fixedpoint::{
    exp_on_negative_values_q5_26, get_reciprocal, multiply_by_quantized_multiplier, requantize,
};
use lepton_nn::{Engine, Model, NoHook, Plan, StepHook, StepSpan};
use lepton_tests::{f32_of, ints, model_from_vectors, tflite_bytes, vectors};

struct Capture(Vec<Vec<i8>>);
impl StepHook for Capture {
    fn after_step(&mut self, _step: StepSpan, output: &[i8]) {
        self.0.push(output.to_vec());
    }
}

fn json_blob() -> Vec<u8> {
    model_from_vectors(&vectors())
        .to_lpk()
        .expect("JSON model serializes")
}

#[test]
fn multipliers_and_shifts_match_tflite_quantize_multiplier() {
    let v = vectors();
    let mut channels = 0;
    for layer in v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l.get("quantized_multiplier").is_some())
    {
        let (in_s, out_s) = (
            f32_of(&layer["input_scale"]),
            f32_of(&layer["output_scale"]),
        );
        let ms: Vec<i32> = ints(&layer["quantized_multiplier"]);
        let shifts: Vec<i32> = ints(&layer["shift"]);
        for (c, w) in layer["weight_scales_f32_bits_hex"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let w = f32::from_bits(
                u32::from_str_radix(w.as_str().unwrap().trim_start_matches("0x"), 16).unwrap(),
            );
            let eff = effective_scale(in_s, w, out_s);
            let want = &layer["effective_scale_double"][c];
            let want: f64 = want
                .as_f64()
                .or_else(|| want.as_str().and_then(|s| s.parse().ok()))
                .expect("f64 or decimal string");
            assert_eq!(eff, want, "layer {} channel {c}", layer["index"]);
            assert_eq!(
                quantize_multiplier(eff),
                (ms[c], shifts[c]),
                "layer {} channel {c}",
                layer["index"]
            );
            channels += 1;
        }
    }
    assert_eq!(channels, 234);
}

#[test]
fn worked_requantization_examples() {
    let v = vectors();
    let examples = v["requant_examples"].as_array().unwrap();
    assert_eq!(examples.len(), 30);
    for e in examples {
        let (acc, m, shift) = (
            e["acc_int32"].as_i64().unwrap() as i32,
            e["quantized_multiplier"].as_i64().unwrap() as i32,
            e["shift"].as_i64().unwrap() as i32,
        );
        let zp = e["output_zero_point"].as_i64().unwrap() as i32;
        let (lo, hi) = (
            e["act_min"].as_i64().unwrap() as i8,
            e["act_max"].as_i64().unwrap() as i8,
        );
        assert_eq!(
            multiply_by_quantized_multiplier(acc, m, shift) as i64,
            e["rescaled"]["double"].as_i64().unwrap(),
            "{e}"
        );
        assert_eq!(
            requantize(acc, m, shift, zp, lo, hi) as i64,
            e["output_int8"]["double"].as_i64().unwrap(),
            "{e}"
        );
    }
    // ARITHMETIC.md §7: conv0/6, acc 34050 lands on 107.5 after the first rounding and becomes 108.
    assert_eq!(multiply_by_quantized_multiplier(34050, 1735624115, -8), 108);
    assert_eq!(requantize(34050, 1735624115, -8, -128, -128, 127), -20);
}

#[test]
fn softmax_fixed_point_internals() {
    let v = vectors();
    let sm = &v["layers"][8]["fixed_point"];
    let logits_scale = f32_of(&v["layers"][8]["input_scale"]);
    let (m, left, diff_min) = softmax_params(1.0, logits_scale);
    assert_eq!(
        (m as i64, left as i64, diff_min as i64),
        (
            sm["input_multiplier"].as_i64().unwrap(),
            sm["input_left_shift"].as_i64().unwrap(),
            sm["diff_min"].as_i64().unwrap()
        )
    );
    for d in diff_min..=0 {
        let scaled = multiply_by_quantized_multiplier(d, m, left);
        assert_eq!(
            scaled as i64,
            sm["scaled_diff_q5_26_by_diff"][d.to_string()]
                .as_i64()
                .unwrap(),
            "diff {d}"
        );
        assert_eq!(
            exp_on_negative_values_q5_26(scaled) as i64,
            sm["exp_q0_31_by_diff"][d.to_string()].as_i64().unwrap(),
            "diff {d}"
        );
    }
    for e in v["softmax_examples"].as_array().unwrap() {
        let fp = &e["fixed_point"];
        let (recip, nbits) = get_reciprocal(fp["sum_of_exps_q12"].as_i64().unwrap() as i32, 12);
        assert_eq!(recip as i64, fp["reciprocal_q31"].as_i64().unwrap());
        assert_eq!(nbits as i64, fp["num_bits_over_unit"].as_i64().unwrap());
    }
}

#[test]
fn every_layer_bit_exact_on_the_20_traced_cases() {
    let v = vectors();
    let blob = json_blob();
    let mut plan = Plan::new();
    let engine = Engine::reference(Model::parse(&blob).unwrap(), &mut plan).unwrap();
    let mut arena = vec![0u8; engine.arena_bytes()];
    let traced: Vec<_> = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("layer_outputs_int8").is_some())
        .collect();
    assert_eq!(traced.len(), 20);
    for case in traced {
        let input: Vec<i8> = ints(&case["input_int8"]);
        let mut capture = Capture(Vec::new());
        engine.run(&input, &mut arena, &mut capture).unwrap();
        let expected = case["layer_outputs_int8"].as_array().unwrap();
        assert_eq!(capture.0.len(), expected.len());
        for (k, (got, want)) in capture.0.iter().zip(expected).enumerate() {
            let want: Vec<i8> = ints(want);
            let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(
                got.len(),
                want.len(),
                "case {} layer {k}: length",
                case["index"]
            );
            assert_eq!(
                differing, 0,
                "case {} layer {k}: {differing} elements differ from TFLM",
                case["index"]
            );
        }
    }
}

#[test]
fn logits_and_softmax_bit_exact_on_all_100_cases() {
    let v = vectors();
    let blob = json_blob();
    let model = Model::parse(&blob).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 100);
    let (mut plan_a, mut plan_b) = (Plan::new(), Plan::new());
    for engine in [
        Engine::reference(model, &mut plan_a).unwrap(),
        Engine::new(model, &mut plan_b).unwrap(),
    ] {
        let mut arena = vec![0u8; engine.arena_bytes()];
        for case in cases {
            let input: Vec<i8> = ints(&case["input_int8"]);
            let out = engine.run(&input, &mut arena, &mut NoHook).unwrap();
            let which = if engine.is_optimized() {
                "optimized"
            } else {
                "reference"
            };
            assert_eq!(
                out.logits,
                ints::<i8>(&case["logits_int8"]).as_slice(),
                "{which} case {} logits",
                case["index"]
            );
            assert_eq!(
                out.probabilities.unwrap(),
                ints::<i8>(&case["softmax_int8"]).as_slice(),
                "{which} case {} softmax",
                case["index"]
            );
        }
    }
}

#[test]
fn pixel_quantization_reproduces_the_reference_inputs() {
    // The vectors' inputs are TFLite's quantization of pixel/255 (scale 1/255, zero point -128):
    // pixel - 128, so the reference input determines the pixels.
    let v = vectors();
    let blob = json_blob();
    let model = Model::parse(&blob).unwrap();
    let case = &v["cases"][0];
    let input: Vec<i8> = ints(&case["input_int8"]);
    let pixels: Vec<u8> = input.iter().map(|&q| (q as i32 + 128) as u8).collect();
    let split = lepton::data::Split {
        images: pixels,
        labels: vec![0],
        rows: 28,
        cols: 28,
    };
    assert_eq!(
        lepton::eval::quantize_images(&model, &split).unwrap(),
        input
    );
}

#[test]
fn tflite_import_gives_the_same_bits_as_the_json_model() {
    let imported = import_tflite(&tflite_bytes()).expect("import");
    let from_json = model_from_vectors(&vectors());
    assert_eq!(imported, from_json);
    assert_eq!(imported.to_lpk().unwrap(), json_blob());
}

#[test]
fn planned_arena_is_smaller_than_tflm() {
    let blob = json_blob();
    let model = Model::parse(&blob).unwrap();
    // Reference kernels, one layer at a time: the largest live pair is 26x26x32 + 13x13x32 =
    // 27,040 bytes (TFLM's arena for this model: 31,984).
    let mut plan = Plan::new();
    let reference = Engine::reference(model, &mut plan).unwrap();
    assert_eq!(reference.arena_bytes(), 26 * 26 * 32 + 13 * 13 * 32);
    let mut small = vec![0u8; reference.arena_bytes() - 1];
    let err = reference
        .run(&[0; 784], &mut small, &mut NoHook)
        .unwrap_err();
    assert_eq!(
        err,
        lepton_nn::Error::ArenaTooSmall {
            needed: 27_040,
            available: 27_039
        }
    );
    // Fused conv + pool never stores 26x26x32: the largest step is conv2+pool2,
    // 13x13x32 in + 5x5x64 out + the four 288-tap i16 patches of a 2x2 pooling window
    // (4 x 576 bytes, +3 for word alignment).
    let mut plan = Plan::new();
    let optimized = Engine::new(model, &mut plan).unwrap();
    // conv1+pool1, conv2+pool2, conv3, reshape, fc1, fc2, softmax.
    assert_eq!(optimized.step_count(), 7);
    assert_eq!(
        optimized.arena_bytes(),
        13 * 13 * 32 + 5 * 5 * 64 + 4 * 2 * 288 + 3
    );
    assert!(optimized.arena_bytes() <= 10_240);
}
