//! Property tests: each reference kernel against a naive wide-integer model of the same maths
//! (i64/i128 arithmetic, exact rational rounding), on random shapes and values.

use lepton_nn::kernels::*;
use lepton_nn::kernels::fast::*;
use lepton_nn::{I32Le, Padding, Requant, Shape, WeightLayout};
use proptest::prelude::*;
use std::ops::RangeInclusive;

/// Requantization written from its definition: floor((x*M + 2^30) / 2^31), then x / 2^r rounded
/// half away from zero, in i128.
fn naive_requant(acc: i64, m: i32, shift: i32, zp: i32, lo: i8, hi: i8) -> i8 {
    let x = (acc as i128) << shift.max(0);
    let high = (x * m as i128 + (1i128 << 30)).div_euclid(1i128 << 31);
    let r = (-shift).max(0);
    let q = if r == 0 {
        high
    } else {
        let d = 1i128 << r;
        let q = (2 * high.abs() + d) / (2 * d);
        if high < 0 { -q } else { q }
    };
    (q + zp as i128).clamp(lo as i128, hi as i128) as i8
}

fn le(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Leading padding and output size, from TFLite's definitions.
fn geometry(input: usize, k: usize, s: usize, same: bool) -> (usize, usize) {
    if same {
        let out = input.div_ceil(s);
        let pad = (((out - 1) * s + k).saturating_sub(input)) / 2;
        (out, pad)
    } else {
        ((input - k) / s + 1, 0)
    }
}

#[derive(Debug, Clone)]
struct ConvCase {
    h: usize,
    w: usize,
    ci: usize,
    co: usize,
    k: (usize, usize),
    s: (usize, usize),
    same: bool,
    in_zp: i32,
    out_zp: i32,
    act: (i8, i8),
    input: Vec<i8>,
    weights: Vec<i8>,
    bias: Vec<i32>,
    mult: Vec<i32>,
    shift: Vec<i32>,
}

fn act_range() -> impl Strategy<Value = (i8, i8)> {
    (any::<i8>(), any::<i8>()).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

/// Input height, width, channels in and out, kernel, strides, SAME padding.
type Geometry = (usize, usize, usize, usize, (usize, usize), (usize, usize), bool);

/// Random zero points, activation range, tensors and requantization for a convolution of
/// `geometry`, multipliers and shifts drawn from the given ranges.
fn conv_values(geometry: Geometry, mult: RangeInclusive<i32>, shift: RangeInclusive<i32>) -> impl Strategy<Value = ConvCase> {
    let (h, w, ci, co, k, s, same) = geometry;
    (
        -128i32..=127,
        -128i32..=127,
        act_range(),
        prop::collection::vec(any::<i8>(), h * w * ci),
        prop::collection::vec(any::<i8>(), co * k.0 * k.1 * ci),
        prop::collection::vec(-100_000i32..=100_000, co),
        prop::collection::vec(mult, co),
        prop::collection::vec(shift, co),
    )
        .prop_map(move |(in_zp, out_zp, act, input, weights, bias, mult, shift)| ConvCase {
            h, w, ci, co, k, s, same, in_zp, out_zp, act, input, weights, bias, mult, shift,
        })
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (1usize..=9, 1usize..=9, 1usize..=4, 1usize..=5, 1usize..=3, 1usize..=3, 1usize..=3, 1usize..=2, any::<bool>())
        .prop_filter("VALID needs kernel <= input", |&(h, w, _, _, kh, kw, _, _, same)| same || (kh <= h && kw <= w))
        .prop_flat_map(|(h, w, ci, co, kh, kw, sh, sw, same)| conv_values((h, w, ci, co, (kh, kw), (sh, sw), same), 1i32 << 30..=i32::MAX, -20..=1))
}

fn naive_conv(c: &ConvCase) -> Vec<i8> {
    let (oh, pt) = geometry(c.h, c.k.0, c.s.0, c.same);
    let (ow, pl) = geometry(c.w, c.k.1, c.s.1, c.same);
    let mut out = Vec::new();
    for oy in 0..oh {
        for ox in 0..ow {
            for oc in 0..c.co {
                let mut acc = c.bias[oc] as i64;
                for ky in 0..c.k.0 {
                    for kx in 0..c.k.1 {
                        let iy = (oy * c.s.0 + ky) as i64 - pt as i64;
                        let ix = (ox * c.s.1 + kx) as i64 - pl as i64;
                        if iy < 0 || ix < 0 || iy >= c.h as i64 || ix >= c.w as i64 {
                            continue;
                        }
                        for ic in 0..c.ci {
                            let x = c.input[(iy as usize * c.w + ix as usize) * c.ci + ic] as i64;
                            let w = c.weights[((oc * c.k.0 + ky) * c.k.1 + kx) * c.ci + ic] as i64;
                            acc += w * (x - c.in_zp as i64);
                        }
                    }
                }
                out.push(naive_requant(acc, c.mult[oc], c.shift[oc], c.out_zp, c.act.0, c.act.1));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn conv2d_matches_naive(c in conv_case()) {
        let (oh, _) = geometry(c.h, c.k.0, c.s.0, c.same);
        let (ow, _) = geometry(c.w, c.k.1, c.s.1, c.same);
        let (bias, mult, shift) = (le(&c.bias), le(&c.mult), le(&c.shift));
        let p = Conv2d {
            input: Shape::new(c.h as u16, c.w as u16, c.ci as u16),
            output: Shape::new(oh as u16, ow as u16, c.co as u16),
            kernel_h: c.k.0 as u8, kernel_w: c.k.1 as u8, stride_h: c.s.0 as u8, stride_w: c.s.1 as u8,
            padding: if c.same { Padding::Same } else { Padding::Valid },
            input_zp: c.in_zp,
            weights: &c.weights,
            layout: WeightLayout::Canonical,
            bias: I32Le::new(&bias),
            requant: Requant::new(I32Le::new(&mult), I32Le::new(&shift), c.out_zp, c.act.0, c.act.1),
        };
        let mut out = vec![0i8; oh * ow * c.co];
        let mut scratch = vec![0u8; conv2d_s8_scratch_bytes(&p)];
        conv2d_s8(&p, &c.input, &mut out, &mut scratch).unwrap();
        prop_assert_eq!(out, naive_conv(&c));
    }

    #[test]
    fn fully_connected_matches_naive(
        (n, m, input, weights, bias, mult, shift) in (1usize..=64, 1usize..=12).prop_flat_map(|(n, m)| (
            Just(n), Just(m),
            prop::collection::vec(any::<i8>(), n),
            prop::collection::vec(any::<i8>(), n * m),
            prop::collection::vec(-1_000_000i32..=1_000_000, m),
            prop::collection::vec(0i32..=i32::MAX, m),
            prop::collection::vec(-31i32..=0, m),
        )),
        in_zp in -128i32..=127, out_zp in -128i32..=127, act in act_range(),
    ) {
        let (b, mu, sh) = (le(&bias), le(&mult), le(&shift));
        let p = FullyConnected {
            input_len: n, output_len: m, input_zp: in_zp, weights: &weights, layout: WeightLayout::Canonical, bias: I32Le::new(&b),
            requant: Requant::new(I32Le::new(&mu), I32Le::new(&sh), out_zp, act.0, act.1),
        };
        let mut out = vec![0i8; m];
        fully_connected_s8(&p, &input, &mut out, &mut []).unwrap();
        let want: Vec<i8> = (0..m).map(|o| {
            let acc: i64 = bias[o] as i64 + (0..n).map(|i| weights[o * n + i] as i64 * (input[i] as i64 - in_zp as i64)).sum::<i64>();
            naive_requant(acc, mult[o], shift[o], out_zp, act.0, act.1)
        }).collect();
        prop_assert_eq!(out, want);
    }

    #[test]
    fn pools_match_naive(
        // Channels beyond 32: the kernel folds them 32 at a time.
        (h, w, c, k, s, same, input) in (1usize..=10, 1usize..=10, prop_oneof![1usize..=4, 30usize..=70], 1usize..=3, 1usize..=3, any::<bool>())
            .prop_filter("VALID needs kernel <= input", |&(h, w, _, k, _, same)| same || (k <= h && k <= w))
            .prop_flat_map(|(h, w, c, k, s, same)| (Just(h), Just(w), Just(c), Just(k), Just(s), Just(same), prop::collection::vec(any::<i8>(), h * w * c))),
        act in act_range(),
    ) {
        let (oh, pt) = geometry(h, k, s, same);
        let (ow, pl) = geometry(w, k, s, same);
        let p = Pool {
            input: Shape::new(h as u16, w as u16, c as u16), output: Shape::new(oh as u16, ow as u16, c as u16),
            kernel_h: k as u8, kernel_w: k as u8, stride_h: s as u8, stride_w: s as u8,
            padding: if same { Padding::Same } else { Padding::Valid }, act_min: act.0, act_max: act.1,
        };
        let mut max_out = vec![0i8; oh * ow * c];
        let mut avg_out = vec![0i8; oh * ow * c];
        max_pool_s8(&p, &input, &mut max_out, &mut []).unwrap();
        avg_pool_s8(&p, &input, &mut avg_out, &mut []).unwrap();
        for oy in 0..oh { for ox in 0..ow { for ch in 0..c {
            let taps: Vec<i64> = (0..k).flat_map(|ky| (0..k).map(move |kx| (ky, kx)))
                .filter_map(|(ky, kx)| {
                    let iy = (oy * s + ky) as i64 - pt as i64;
                    let ix = (ox * s + kx) as i64 - pl as i64;
                    (iy >= 0 && ix >= 0 && iy < h as i64 && ix < w as i64).then(|| input[(iy as usize * w + ix as usize) * c + ch] as i64)
                }).collect();
            let max = *taps.iter().max().unwrap();
            let (sum, n) = (taps.iter().sum::<i64>(), taps.len() as i64);
            let mean = { let q = (2 * sum.abs() + n) / (2 * n); if sum < 0 { -q } else { q } };
            let at = (oy * ow + ox) * c + ch;
            prop_assert_eq!(max_out[at] as i64, max.clamp(act.0 as i64, act.1 as i64));
            prop_assert_eq!(avg_out[at] as i64, mean.clamp(act.0 as i64, act.1 as i64));
        }}}
    }

    /// Global average pools near and past the 256 taps the 16-bit lane sums hold, at the extreme
    /// inputs (every tap -128 or 127) and at random ones.
    #[test]
    fn global_average_pools_of_many_taps((h, w) in prop_oneof![Just((16usize, 16usize)), Just((16, 17)), Just((25, 5)), (1usize..=20, 1usize..=20)], c in prop_oneof![Just(4usize), Just(8), Just(36)], fill in 0u8..3, seed in any::<u64>()) {
        let mut rng = seed | 1;
        let input: Vec<i8> = (0..h * w * c).map(|_| { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; match fill { 0 => -128, 1 => 127, _ => rng as i8 } }).collect();
        let p = Pool {
            input: Shape::new(h as u16, w as u16, c as u16), output: Shape::new(1, 1, c as u16),
            kernel_h: h as u8, kernel_w: w as u8, stride_h: 1, stride_w: 1, padding: Padding::Valid, act_min: -128, act_max: 127,
        };
        let mut out = vec![0i8; c];
        avg_pool_s8(&p, &input, &mut out, &mut []).unwrap();
        for ch in 0..c {
            let (sum, n) = ((0..h * w).map(|i| input[i * c + ch] as i64).sum::<i64>(), (h * w) as i64);
            let mean = { let q = (2 * sum.abs() + n) / (2 * n); if sum < 0 { -q } else { q } };
            prop_assert_eq!(out[ch] as i64, mean.clamp(-128, 127));
        }
    }

    #[test]
    fn softmax_tracks_the_real_softmax(row in prop::collection::vec(any::<i8>(), 1..=16), scale in 0.01f64..0.5) {
        // TFLM's setup for beta = 1 and this input scale (the host computes the same in lepton::lpk::arithmetic).
        let real = scale * (1u64 << 26) as f64;
        let (q, e) = frexp(real);
        let m = (q * (1u64 << 31) as f64).round() as i64;
        let (m, e) = if m == 1 << 31 { (m / 2, e + 1) } else { (m, e) };
        let diff_min = -((31.0 * (1u64 << 26) as f64 / (1u64 << e) as f64).floor() as i32);
        let p = Softmax { rows: 1, depth: row.len(), input_multiplier: m as i32, input_left_shift: e, diff_min };
        let mut out = vec![0i8; row.len()];
        softmax_s8(&p, &row, &mut out, &mut []).unwrap();
        let max = *row.iter().max().unwrap() as f64;
        let exps: Vec<f64> = row.iter().map(|&x| ((x as f64 - max) * scale).exp()).collect();
        let total: f64 = exps.iter().sum();
        for (o, e) in out.iter().zip(&exps) {
            let want = (e / total * 256.0 - 128.0).clamp(-128.0, 127.0);
            prop_assert!((*o as f64 - want).abs() <= 1.0, "got {o}, real {want}");
        }
    }

    #[test]
    fn argmax_is_the_first_maximum(values in prop::collection::vec(any::<i8>(), 1..=32)) {
        let max = *values.iter().max().unwrap();
        prop_assert_eq!(argmax_s8(&values), values.iter().position(|&v| v == max));
    }
}

/// `frexp` for positive finite doubles: `x = q * 2^e`, `0.5 <= q < 1`.
fn frexp(x: f64) -> (f64, i32) {
    let e = x.log2().floor() as i32 + 1;
    let q = x / 2f64.powi(e);
    if q >= 1.0 { (q / 2.0, e + 1) } else if q < 0.5 { (q * 2.0, e - 1) } else { (q, e) }
}

#[test]
fn argmax_of_nothing_is_none() {
    assert_eq!(argmax_s8(&[]), None);
}

#[test]
fn kernels_reject_wrong_buffer_sizes() {
    let p = Pool {
        input: Shape::new(4, 4, 1), output: Shape::new(2, 2, 1), kernel_h: 2, kernel_w: 2, stride_h: 2, stride_w: 2,
        padding: Padding::Valid, act_min: -128, act_max: 127,
    };
    let mut out = [0i8; 3];
    assert_eq!(max_pool_s8(&p, &[0; 16], &mut out, &mut []), Err(lepton_nn::Error::BufferSize { expected: 4, found: 3 }));
}

// ---------------------------------------------------------------------------------------------
// Optimized kernels against the reference kernels (the oracle), bit for bit.

/// Weights re-laid out in `layout`, in a word-aligned buffer as the model file guarantees.
fn aligned_layout(values: &[i8], channels: usize, taps: usize, layout: WeightLayout) -> Vec<u32> {
    let mut bytes = vec![0i8; layout.bytes(channels, taps).unwrap()];
    if layout == WeightLayout::Winograd2x2 {
        lepton_nn::types::write_winograd(values, channels, taps / 9, &mut bytes);
    }
    for c in (0..channels).filter(|_| layout != WeightLayout::Winograd2x2) {
        for t in 0..taps {
            layout.put(&mut bytes, c, t, taps, values[c * taps + t]);
        }
    }
    bytes.resize(bytes.len().div_ceil(4) * 4, 0);
    bytes.chunks(4).map(|q| u32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8])).collect()
}

fn as_bytes(words: &[u32]) -> &[i8] {
    // SAFETY: reading u32 storage as bytes is always valid.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<i8>(), words.len() * 4) }
}

fn oc4_layout() -> impl Strategy<Value = WeightLayout> {
    prop_oneof![Just(WeightLayout::Oc4Quads), Just(WeightLayout::Oc4PairsI16), Just(WeightLayout::Oc4Int4)]
}

#[derive(Debug, Clone)]
struct FastCase {
    conv: ConvCase,
    pool: (usize, usize),
}

/// Shapes the optimized conv kernels take: VALID, input channels a multiple of 4 (or exactly 1),
/// right shifts only; a max-pool after it.
fn fast_case(one_channel: bool) -> impl Strategy<Value = FastCase> {
    let ci = if one_channel { Just(1usize).boxed() } else { prop_oneof![Just(4usize), Just(8), Just(12)].boxed() };
    (3usize..=10, 3usize..=10, ci, 1usize..=9, 1usize..=3, 1usize..=3, 1usize..=2, 1usize..=2, 1usize..=3)
        .prop_filter("VALID conv and pool fit", |&(h, w, _, _, kh, kw, s, pk, ps)| {
            kh <= h && kw <= w && (h - kh) / s + 1 >= pk && (w - kw) / s + 1 >= pk && ps >= 1
        })
        .prop_flat_map(|(h, w, ci, co, kh, kw, s, pk, ps)| {
            (conv_values((h, w, ci, co, (kh, kw), (s, s), false), 0..=i32::MAX, -20..=0), Just((pk, ps)))
        })
        .prop_map(|(conv, pool)| FastCase { conv, pool })
}

struct Built {
    bias: Vec<u8>,
    mult: Vec<u8>,
    shift: Vec<u8>,
    words: Vec<u32>,
    len: usize,
}

fn build(c: &ConvCase, layout: WeightLayout) -> Built {
    let taps = c.k.0 * c.k.1 * c.ci;
    let len = layout.bytes(c.co, taps).unwrap();
    Built { bias: le(&c.bias), mult: le(&c.mult), shift: le(&c.shift), words: aligned_layout(&c.weights, c.co, taps, layout), len }
}

fn conv_params<'a>(c: &ConvCase, b: &'a Built, layout: WeightLayout) -> Conv2d<'a> {
    let (oh, _) = geometry(c.h, c.k.0, c.s.0, c.same);
    let (ow, _) = geometry(c.w, c.k.1, c.s.1, c.same);
    Conv2d {
        input: Shape::new(c.h as u16, c.w as u16, c.ci as u16),
        output: Shape::new(oh as u16, ow as u16, c.co as u16),
        kernel_h: c.k.0 as u8, kernel_w: c.k.1 as u8, stride_h: c.s.0 as u8, stride_w: c.s.1 as u8,
        padding: if c.same { Padding::Same } else { Padding::Valid },
        input_zp: c.in_zp,
        weights: &as_bytes(&b.words)[..b.len],
        layout,
        bias: I32Le::new(&b.bias),
        requant: Requant::new(I32Le::new(&b.mult), I32Le::new(&b.shift), c.out_zp, c.act.0, c.act.1),
    }
}

fn pool_after(conv: &Conv2d, (k, s): (usize, usize), act: (i8, i8)) -> Pool {
    let (h, w) = (conv.output.h as usize, conv.output.w as usize);
    Pool {
        input: conv.output,
        output: Shape::new(((h - k) / s + 1) as u16, ((w - k) / s + 1) as u16, conv.output.c),
        kernel_h: k as u8, kernel_w: k as u8, stride_h: s as u8, stride_w: s as u8,
        padding: Padding::Valid, act_min: act.0, act_max: act.1,
    }
}

/// Reference conv then reference max-pool.
fn reference_conv_pool(conv: &Conv2d, pool: Option<&Pool>, input: &[i8]) -> Vec<i8> {
    let mut out = vec![0i8; conv.output.len().unwrap()];
    conv2d_s8(conv, input, &mut out, &mut vec![0u8; conv2d_s8_scratch_bytes(conv)]).unwrap();
    match pool {
        None => out,
        Some(p) => {
            let mut pooled = vec![0i8; p.output.len().unwrap()];
            max_pool_s8(p, &out, &mut pooled, &mut []).unwrap();
            pooled
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn fast_conv_matches_reference(f in fast_case(false), layout in oc4_layout()) {
        let b = build(&f.conv, layout);
        let p = conv_params(&f.conv, &b, layout);
        prop_assert!(conv2d_s8_fast_supported(&p));
        let mut out = vec![0i8; p.output.len().unwrap()];
        let mut scratch = vec![0u8; conv2d_s8_fast_scratch_bytes(&p)];
        conv2d_s8_fast(&p, &f.conv.input, &mut out, &mut scratch).unwrap();
        prop_assert_eq!(out, reference_conv_pool(&p, None, &f.conv.input));
    }

    /// Pointwise convs with split i16 weights (the two-pixel kernel; over 16 channel groups it
    /// runs in chunks): apart, and in place over their input in the direction the planner would
    /// choose (forward from a common start where the output is no wider, from a common end where
    /// it is; backward mirrored), equal to the naive definition, as the reference kernel is.
    #[test]
    fn split_pointwise_conv_matches_naive(
        c in (1usize..=7, 1usize..=7, prop_oneof![Just(4usize), Just(8), Just(16), Just(20)], prop_oneof![1usize..=12, Just(34usize), Just(36)])
            .prop_flat_map(|(h, w, ci, half)| conv_values((h, w, ci, 2 * half, (1, 1), (1, 1), false), 1i32 << 30..=i32::MAX, -20..=-1))
            .prop_map(|mut c| { c.act = (i8::MIN, i8::MAX); c }),
        reverse in any::<bool>(),
    ) {
        let layout = WeightLayout::Oc4SplitI16;
        let b = build(&c, layout);
        let p = conv_params(&c, &b, layout);
        prop_assert!(conv2d_s8_fast_supported(&p));
        let want = naive_conv(&c);
        prop_assert_eq!(&reference_conv_pool(&p, None, &c.input), &want);
        let mut scratch = vec![0u8; conv2d_s8_fast_scratch_bytes(&p)];
        let mut out = vec![0i8; want.len()];
        conv2d_s8_fast(&p, &c.input, &mut out, &mut scratch).unwrap();
        prop_assert_eq!(&out, &want);
        let (n_in, n_out) = (c.input.len(), want.len());
        let span = n_in.max(n_out);
        let from_start = (n_out <= n_in) != reverse;
        let (input, output) = if from_start { (0..n_in, 0..n_out) } else { (span - n_in..span, span - n_out..span) };
        let mut shared = vec![0i8; span];
        shared[input.clone()].copy_from_slice(&c.input);
        conv2d_s8_fast_io(&p, &mut Io::Shared { io: &mut shared, input, output: output.clone(), reverse }, &mut scratch).unwrap();
        prop_assert_eq!(&shared[output.clone()], &want[..], "in place: {} -> {} bytes, reverse {}, output {:?}", n_in, n_out, reverse, output);
    }

    /// Split i16 weights on any kernel, stride, padding and channel count (taps padded to whole
    /// quads; the two-pixel kernel with im2col patches, built apart or straight from the input
    /// where both windows lie inside it), equal to the naive definition.
    #[test]
    fn split_conv_of_any_geometry_matches_naive(
        c in (1usize..=9, 1usize..=9, 1usize..=8, 1usize..=10, 1usize..=4, 1usize..=3, 1usize..=2, 1usize..=2, any::<bool>())
            .prop_filter("VALID needs kernel <= input", |&(h, w, _, _, kh, kw, _, _, same)| same || (kh <= h && kw <= w))
            .prop_flat_map(|(h, w, ci, half, kh, kw, sh, sw, same)| conv_values((h, w, ci, 2 * half, (kh, kw), (sh, sw), same), 1i32 << 30..=i32::MAX, -20..=-1))
            .prop_map(|mut c| { c.act = (i8::MIN, i8::MAX); c }),
    ) {
        let layout = WeightLayout::Oc4SplitI16;
        let b = build(&c, layout);
        let p = conv_params(&c, &b, layout);
        prop_assert!(conv2d_s8_fast_supported(&p));
        let want = naive_conv(&c);
        let mut out = vec![0i8; want.len()];
        let mut scratch = vec![0u8; conv2d_s8_fast_scratch_bytes(&p)];
        conv2d_s8_fast(&p, &c.input, &mut out, &mut scratch).unwrap();
        prop_assert_eq!(&out, &want);
        prop_assert_eq!(reference_conv_pool(&p, None, &c.input), want);
    }

    /// Any kernel, stride, padding and channel count (taps padded to whole quads), right or left
    /// shifts (the prepared requantization or TFLM's general one).
    #[test]
    fn fast_conv_of_any_geometry_matches_reference(
        c in (1usize..=9, 1usize..=9, 1usize..=6, 1usize..=9, 1usize..=3, 1usize..=3, 1usize..=2, 1usize..=2, any::<bool>())
            .prop_filter("VALID needs kernel <= input", |&(h, w, _, _, kh, kw, _, _, same)| same || (kh <= h && kw <= w))
            .prop_flat_map(|(h, w, ci, co, kh, kw, sh, sw, same)| conv_values((h, w, ci, co, (kh, kw), (sh, sw), same), 0..=i32::MAX, -31..=1)),
        layout in oc4_layout(),
    ) {
        let b = build(&c, layout);
        let p = conv_params(&c, &b, layout);
        prop_assert!(conv2d_s8_fast_supported(&p));
        let mut out = vec![0i8; p.output.len().unwrap()];
        let mut scratch = vec![0u8; conv2d_s8_fast_scratch_bytes(&p)];
        conv2d_s8_fast(&p, &c.input, &mut out, &mut scratch).unwrap();
        let want = reference_conv_pool(&p, None, &c.input);
        prop_assert_eq!(out, want);
    }

    #[test]
    fn fused_conv_maxpool_matches_reference(f in fast_case(false), pool_act in act_range(), layout in oc4_layout()) {
        let b = build(&f.conv, layout);
        let p = conv_params(&f.conv, &b, layout);
        let pool = pool_after(&p, f.pool, pool_act);
        // int4 octets: the fused kernel takes taps in whole octets only.
        prop_assume!(layout != WeightLayout::Oc4Int4 || (f.conv.k.0 * f.conv.k.1 * f.conv.ci) % 8 == 0);
        prop_assert!(conv2d_maxpool_s8_fast_supported(&p, &pool));
        let mut out = vec![0i8; pool.output.len().unwrap()];
        let mut scratch = vec![0u8; conv2d_maxpool_s8_fast_scratch_bytes(&p, &pool)];
        conv2d_maxpool_s8_fast(&p, &pool, &f.conv.input, &mut out, &mut scratch).unwrap();
        prop_assert_eq!(out, reference_conv_pool(&p, Some(&pool), &f.conv.input));
    }

    /// With int8 quads the conv kernels work a block of pixels (or pooled outputs) at a time, as
    /// many as the scratch holds besides one widened group: any scratch from the one-patch
    /// minimum to the full request gives the reference's outputs.
    #[test]
    fn compact_kernels_match_the_reference_with_any_block(f in fast_case(false), pool_act in act_range(), fraction in 0.0f64..=1.0) {
        let layout = WeightLayout::Oc4Quads;
        let b = build(&f.conv, layout);
        let p = conv_params(&f.conv, &b, layout);
        let patch_bytes = 4 * layout.stored_taps(f.conv.k.0 * f.conv.k.1 * f.conv.ci).div_ceil(2);
        let between = |min: usize, full: usize| min + ((full.max(min) - min) as f64 * fraction) as usize;
        let mut out = vec![0i8; p.output.len().unwrap()];
        let mut scratch = vec![0u8; between(patch_bytes + 3, conv2d_s8_fast_scratch_bytes(&p))];
        conv2d_s8_fast(&p, &f.conv.input, &mut out, &mut scratch).unwrap();
        prop_assert_eq!(out, reference_conv_pool(&p, None, &f.conv.input));

        let pool = pool_after(&p, f.pool, pool_act);
        let window = pool.kernel_h as usize * pool.kernel_w as usize;
        let mut out = vec![0i8; pool.output.len().unwrap()];
        let mut scratch = vec![0u8; between(window * patch_bytes + 3, conv2d_maxpool_s8_fast_scratch_bytes(&p, &pool))];
        conv2d_maxpool_s8_fast(&p, &pool, &f.conv.input, &mut out, &mut scratch).unwrap();
        prop_assert_eq!(out, reference_conv_pool(&p, Some(&pool), &f.conv.input));
    }

    /// Winograd F(2x2, 3x3) conv + 2x2 max-pool: the reference's outputs bit for bit, with the
    /// canonical weights and with the Winograd ones read back by the reference kernel; input
    /// channels in whole quads (the fast kernel's), any output channels (padding channels
    /// included), any size (odd ones drop a row and a column).
    #[test]
    fn winograd_conv_maxpool_matches_reference(
        c in (4usize..=11, 4usize..=11, 1usize..=9, 1usize..=9)
            .prop_flat_map(|(h, w, ci, co)| conv_values((h, w, ci, co, (3, 3), (1, 1), false), 0..=i32::MAX, -20..=0)),
        pool_act in act_range(),
    ) {
        let canonical = build(&c, WeightLayout::Canonical);
        let reference = conv_params(&c, &canonical, WeightLayout::Canonical);
        let pool = pool_after(&reference, (2, 2), pool_act);
        let want = reference_conv_pool(&reference, Some(&pool), &c.input);
        let b = build(&c, WeightLayout::Winograd2x2);
        let p = conv_params(&c, &b, WeightLayout::Winograd2x2);
        // The fast kernel takes whole channel quads; the reference reads the weights of any.
        prop_assert_eq!(reference_conv_pool(&p, Some(&pool), &c.input), want.clone());
        prop_assert_eq!(conv2d_maxpool_s8_winograd_supported(&p, &pool), c.ci % 4 == 0);
        if c.ci % 4 != 0 {
            return Ok(());
        }
        let mut out = vec![0i8; pool.output.len().unwrap()];
        let mut scratch = vec![0u8; conv2d_maxpool_s8_winograd_scratch_bytes(&p, &pool)];
        conv2d_maxpool_s8_winograd(&p, &pool, &c.input, &mut out, &mut scratch).unwrap();
        prop_assert_eq!(&out, &want);
    }

    #[test]
    fn winograd_blocks_round_trip(g in prop::array::uniform9(-128i32..=127)) {
        let u = lepton_nn::types::winograd_filter(&g);
        prop_assert_eq!(lepton_nn::types::winograd_kernel(&u), Some(g));
        prop_assert!(u.iter().all(|v| (i16::MIN as i32..=i16::MAX as i32).contains(v)));
    }

    #[test]
    fn one_channel_conv_maxpool_matches_reference(f in fast_case(true), pool_act in act_range()) {
        let b = build(&f.conv, WeightLayout::Canonical);
        let p = conv_params(&f.conv, &b, WeightLayout::Canonical);
        let pool = pool_after(&p, f.pool, pool_act);
        prop_assert!(conv2d_c1_maxpool_s8_fast_supported(&p, &pool));
        let mut out = vec![0i8; pool.output.len().unwrap()];
        let mut scratch = vec![0u8; conv2d_c1_maxpool_s8_fast_scratch_bytes(&p, &pool)];
        conv2d_c1_maxpool_s8_fast(&p, &pool, &f.conv.input, &mut out, &mut scratch).unwrap();
        prop_assert_eq!(out, reference_conv_pool(&p, Some(&pool), &f.conv.input));
    }

    #[test]
    fn fast_fully_connected_matches_reference(
        // Outputs past 64: the kernel sums 16 groups a requantization call.
        (n, m, input, weights, bias, mult, shift) in (1usize..=40, 1usize..=80).prop_flat_map(|(n4, m)| (
            Just(4 * n4), Just(m),
            prop::collection::vec(any::<i8>(), 4 * n4),
            prop::collection::vec(any::<i8>(), 4 * n4 * m),
            prop::collection::vec(-1_000_000i32..=1_000_000, m),
            prop::collection::vec(0i32..=i32::MAX, m),
            prop::collection::vec(-31i32..=2, m),
        )),
        in_zp in -128i32..=127, out_zp in -128i32..=127, act in act_range(), layout in oc4_layout(),
    ) {
        let (b, mu, sh) = (le(&bias), le(&mult), le(&shift));
        // Values the layout holds (int4: -8..=7).
        let weights: Vec<i8> = weights.iter().map(|&w| (w as i32).clamp(*layout.value_range().start(), *layout.value_range().end()) as i8).collect();
        let words = aligned_layout(&weights, m, n, layout);
        let requant = Requant::new(I32Le::new(&mu), I32Le::new(&sh), out_zp, act.0, act.1);
        let fast = FullyConnected { input_len: n, output_len: m, input_zp: in_zp, weights: as_bytes(&words), layout, bias: I32Le::new(&b), requant };
        let reference = FullyConnected { weights: &weights, layout: WeightLayout::Canonical, ..fast };
        prop_assert!(fully_connected_s8_fast_supported(&fast));
        let (mut got, mut want) = (vec![0i8; m], vec![0i8; m]);
        let mut scratch = vec![0u8; fully_connected_s8_fast_scratch_bytes(&fast)];
        fully_connected_s8_fast(&fast, &input, &mut got, &mut scratch).unwrap();
        fully_connected_s8(&reference, &input, &mut want, &mut []).unwrap();
        // The re-laid-out weights through the reference kernel give the same result too.
        let mut relaid = vec![0i8; m];
        fully_connected_s8(&fast, &input, &mut relaid, &mut []).unwrap();
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(relaid, want);
    }
}

/// Round-half-away-from-zero division of wide integers: TFLM's rounding of a right shift.
fn div_round_away(n: i128, d: i128) -> i128 {
    let q = (2 * n.abs() + d) / (2 * d);
    if n < 0 { -q } else { q }
}

/// `MultiplyByQuantizedMultiplier` from its definition, in i128 (any shift).
fn naive_mbqm(x: i64, m: i32, shift: i32) -> i64 {
    let x = (x as i128) << shift.max(0);
    let high = (x * m as i128 + (1i128 << 30)).div_euclid(1i128 << 31);
    let r = (-shift).max(0);
    (if r == 0 { high } else { div_round_away(high, 1i128 << r) }) as i64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn depthwise_conv2d_matches_naive(
        (h, w, ci, m, k, s, same) in (1usize..=8, 1usize..=8, 1usize..=4, 1usize..=3, 1usize..=3, 1usize..=2, any::<bool>())
            .prop_filter("VALID needs kernel <= input", |&(h, w, _, _, k, _, same)| same || (k <= h && k <= w)),
        seed in any::<u64>(), in_zp in -128i32..=127, out_zp in -128i32..=127, act in act_range(),
    ) {
        let co = ci * m;
        let mut rng = seed | 1;
        let mut next = || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; rng };
        let input: Vec<i8> = (0..h * w * ci).map(|_| next() as i8).collect();
        let weights: Vec<i8> = (0..k * k * co).map(|_| next() as i8).collect();
        let bias: Vec<i32> = (0..co).map(|_| (next() % 200_001) as i32 - 100_000).collect();
        let mult: Vec<i32> = (0..co).map(|_| (1 << 30) + (next() % (1 << 30)) as i32).collect();
        let shift: Vec<i32> = (0..co).map(|_| -((next() % 20) as i32)).collect();
        let (oh, pt) = geometry(h, k, s, same);
        let (ow, pl) = geometry(w, k, s, same);
        let (b, mu, sh) = (le(&bias), le(&mult), le(&shift));
        let p = DepthwiseConv2d {
            input: Shape::new(h as u16, w as u16, ci as u16), output: Shape::new(oh as u16, ow as u16, co as u16),
            kernel_h: k as u8, kernel_w: k as u8, stride_h: s as u8, stride_w: s as u8,
            padding: if same { Padding::Same } else { Padding::Valid }, depth_multiplier: m as u16, input_zp: in_zp,
            weights: &weights, bias: I32Le::new(&b),
            requant: Requant::new(I32Le::new(&mu), I32Le::new(&sh), out_zp, act.0, act.1),
        };
        let mut out = vec![0i8; oh * ow * co];
        depthwise_conv2d_s8(&p, &input, &mut out, &mut []).unwrap();
        for oy in 0..oh { for ox in 0..ow { for oc in 0..co {
            let mut acc = bias[oc] as i64;
            for ky in 0..k { for kx in 0..k {
                let (iy, ix) = ((oy * s + ky) as i64 - pt as i64, (ox * s + kx) as i64 - pl as i64);
                if iy >= 0 && ix >= 0 && iy < h as i64 && ix < w as i64 {
                    let x = input[(iy as usize * w + ix as usize) * ci + oc / m] as i64;
                    acc += weights[(ky * k + kx) * co + oc] as i64 * (x - in_zp as i64);
                }
            }}
            prop_assert_eq!(out[(oy * ow + ox) * co + oc], naive_requant(acc, mult[oc], shift[oc], out_zp, act.0, act.1));
        }}}
    }

    #[test]
    fn add_matches_naive(
        (a, b) in (1usize..=64).prop_flat_map(|n| (prop::collection::vec(any::<i8>(), n), prop::collection::vec(any::<i8>(), n))),
        zps in (-128i32..=127, -128i32..=127, -128i32..=127),
        mults in (0i32..=i32::MAX, 0i32..=i32::MAX, 0i32..=i32::MAX),
        shifts in (-31i32..=0, -31i32..=0, -31i32..=0),
        left_shift in 0i32..=22, act in act_range(),
    ) {
        let p = Add {
            len: a.len(), input1_zp: zps.0, input2_zp: zps.1, output_zp: zps.2, left_shift,
            input1_multiplier: mults.0, input1_shift: shifts.0, input2_multiplier: mults.1, input2_shift: shifts.1,
            output_multiplier: mults.2, output_shift: shifts.2, act_min: act.0, act_max: act.1,
        };
        let mut out = vec![0i8; a.len()];
        add_s8(&p, &a, &b, &mut out, &mut []).unwrap();
        for i in 0..a.len() {
            let x = naive_mbqm((a[i] as i64 - zps.0 as i64) << left_shift, mults.0, shifts.0);
            let y = naive_mbqm((b[i] as i64 - zps.1 as i64) << left_shift, mults.1, shifts.1);
            // The sum wraps in int32 as TFLM's does (it cannot for real scales: both terms are halved).
            let sum = (x as i32).wrapping_add(y as i32) as i64;
            let want = (naive_mbqm(sum, mults.2, shifts.2) + zps.2 as i64).clamp(act.0 as i64, act.1 as i64);
            prop_assert_eq!(out[i] as i64, want);
        }
    }

    #[test]
    fn mean_matches_naive(
        (h, w, c, input) in (1usize..=9, 1usize..=9, 1usize..=5).prop_flat_map(|(h, w, c)| (Just(h), Just(w), Just(c), prop::collection::vec(any::<i8>(), h * w * c))),
        in_zp in -128i32..=127, out_zp in -128i32..=127, m in 0i32..=i32::MAX, shift in -31i32..=6,
    ) {
        let p = Mean { input: Shape::new(h as u16, w as u16, c as u16), input_zp: in_zp, output_zp: out_zp, multiplier: m, shift, act_min: -128, act_max: 127 };
        let mut out = vec![0i8; c];
        mean_s8(&p, &input, &mut out, &mut []).unwrap();
        for ch in 0..c {
            let sum: i64 = (0..h * w).map(|i| input[i * c + ch] as i64).sum::<i64>() - in_zp as i64 * (h * w) as i64;
            // int32 semantics for the left shift, as on the device.
            let shifted = ((sum as i32).wrapping_mul(1i32.wrapping_shl(shift.max(0) as u32))) as i64;
            let want = (naive_mbqm(shifted, m, shift.min(0)) + out_zp as i64).clamp(-128, 127);
            prop_assert_eq!(out[ch] as i64, want);
        }
    }

    #[test]
    fn pad_places_the_input_inside_the_zero_point(
        (h, w, c, input) in (1usize..=6, 1usize..=6, 1usize..=3).prop_flat_map(|(h, w, c)| (Just(h), Just(w), Just(c), prop::collection::vec(any::<i8>(), h * w * c))),
        pads in (0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2), zp in any::<i8>(),
    ) {
        let (oh, ow) = (h + pads.0 + pads.1, w + pads.2 + pads.3);
        let p = Pad { input: Shape::new(h as u16, w as u16, c as u16), output: Shape::new(oh as u16, ow as u16, c as u16), top: pads.0 as u16, left: pads.2 as u16, value: zp };
        let mut out = vec![0i8; oh * ow * c];
        pad_s8(&p, &input, &mut out, &mut []).unwrap();
        for y in 0..oh { for x in 0..ow { for ch in 0..c {
            let inside = y >= pads.0 && y < pads.0 + h && x >= pads.2 && x < pads.2 + w;
            let want = if inside { input[((y - pads.0) * w + x - pads.2) * c + ch] } else { zp };
            prop_assert_eq!(out[(y * ow + x) * c + ch], want);
        }}}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The fast depthwise kernel takes exactly the layers it requantizes inline (right shifts of
    /// at most 22 where the multiplier is not 0, the full int8 clamp) and matches the reference
    /// there, with any kernel (any tap count; 3x3 runs unrolled), stride, padding
    /// and zero points.
    #[test]
    fn fast_depthwise_matches_reference(
        (h, w, c4, kh, kw, s, same) in (1usize..=8, 1usize..=8, 1usize..=3, 1usize..=3, 1usize..=4, 1usize..=2, any::<bool>())
            .prop_filter("VALID needs kernel <= input", |&(h, w, _, kh, kw, _, same)| same || (kh <= h && kw <= w)),
        seed in any::<u64>(), in_zp in -128i32..=127, out_zp in -128i32..=127, act in act_range(), full in any::<bool>(), shifts in -24i32..=1,
    ) {
        let c = 4 * c4;
        let mut rng = seed | 1;
        let mut next = || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; rng };
        let input: Vec<i8> = (0..h * w * c).map(|_| next() as i8).collect();
        let weights: Vec<i8> = (0..kh * kw * c).map(|_| next() as i8).collect();
        let bias: Vec<i32> = (0..c).map(|_| (next() % 200_001) as i32 - 100_000).collect();
        // A channel in eight is dead (multiplier 0), which folds its zero point with any shift.
        let mult: Vec<i32> = (0..c).map(|_| if next() % 8 == 0 { 0 } else { (next() >> 33) as i32 }).collect();
        let shift: Vec<i32> = (0..c).map(|_| shifts.min(0) - (next() % 4) as i32 + if shifts > 0 { 1 } else { 0 }).collect();
        let act = if full { (i8::MIN, i8::MAX) } else { act };
        let (oh, _) = geometry(h, kh, s, same);
        let (ow, _) = geometry(w, kw, s, same);
        let (b, mu, sh) = (le(&bias), le(&mult), le(&shift));
        let p = DepthwiseConv2d {
            input: Shape::new(h as u16, w as u16, c as u16), output: Shape::new(oh as u16, ow as u16, c as u16),
            kernel_h: kh as u8, kernel_w: kw as u8, stride_h: s as u8, stride_w: s as u8,
            padding: if same { Padding::Same } else { Padding::Valid }, depth_multiplier: 1, input_zp: in_zp,
            weights: &weights, bias: I32Le::new(&b),
            requant: Requant::new(I32Le::new(&mu), I32Le::new(&sh), out_zp, act.0, act.1),
        };
        let folds = mult.iter().zip(&shift).all(|(&m, &s)| m == 0 || s >= -22);
        let inline = act == (i8::MIN, i8::MAX) && shift.iter().all(|s| (-31..=-1).contains(s)) && folds;
        prop_assert_eq!(depthwise_conv2d_s8_fast_supported(&p), inline);
        let (mut got, mut want) = (vec![0i8; oh * ow * c], vec![0i8; oh * ow * c]);
        let mut scratch = vec![0u8; depthwise_conv2d_s8_fast_scratch_bytes(&p)];
        let ran = depthwise_conv2d_s8_fast(&p, &input, &mut got, &mut scratch);
        prop_assert_eq!(ran.is_ok(), inline);
        if inline {
            depthwise_conv2d_s8(&p, &input, &mut want, &mut []).unwrap();
            prop_assert_eq!(got, want);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// The SMMULR add against the reference add, for the parameters TFLM's Prepare produces:
    /// right shifts, 20 bits of headroom, any multipliers.
    #[test]
    fn fast_add_matches_reference(
        (a, b) in (1usize..=64).prop_flat_map(|n| (prop::collection::vec(any::<i8>(), n), prop::collection::vec(any::<i8>(), n))),
        zps in (-128i32..=127, -128i32..=127, -128i32..=127),
        mults in (0i32..=i32::MAX, 0i32..=i32::MAX, 0i32..=i32::MAX),
        shifts in (-31i32..=0, -31i32..=0, -31i32..=0),
        left_shift in 0i32..=20, act in act_range(), half in 0usize..3,
    ) {
        // As TFLM's Prepare makes them: the larger-scale input at exactly one half (or neither).
        let (mut mults, mut shifts) = (mults, shifts);
        match half { 0 => { mults.0 = 1 << 30; shifts.0 = 0 } 1 => { mults.1 = 1 << 30; shifts.1 = 0 } _ => { mults.0 = mults.0.min((1 << 30) - 1); mults.1 = mults.1.min((1 << 30) - 1) } }
        let p = Add {
            len: a.len(), input1_zp: zps.0, input2_zp: zps.1, output_zp: zps.2, left_shift,
            input1_multiplier: mults.0, input1_shift: shifts.0, input2_multiplier: mults.1, input2_shift: shifts.1,
            output_multiplier: mults.2, output_shift: shifts.2, act_min: act.0, act_max: act.1,
        };
        // The fast kernel takes the ADDs with a half input whose output zero point folds into
        // the nudge; the others run the reference kernel.
        let folds = (-22..=-1).contains(&shifts.2) && left_shift >= 1;
        prop_assert_eq!(add_s8_fast_supported(&p), half < 2 && folds);
        if !add_s8_fast_supported(&p) {
            return Ok(());
        }
        let (mut got, mut want) = (vec![0i8; a.len()], vec![0i8; a.len()]);
        let mut scratch = vec![0u8; add_s8_fast_scratch_bytes(&p)];
        add_s8_fast(&p, &a, &b, &mut got, &mut scratch).unwrap();
        add_s8(&p, &a, &b, &mut want, &mut []).unwrap();
        prop_assert_eq!(got, want);
    }
}

/// A residual block's two convs (SAME, stride 1, `c` channels in and out, kernels of 1 or 3
/// rows such that the fused kernel takes them) and an ADD as TFLM's Prepare makes it.
fn residual_case() -> impl Strategy<Value = (ConvCase, ConvCase, Add, bool)> {
    (1usize..=7, 1usize..=7, prop_oneof![Just(4usize), Just(8)], prop_oneof![Just(1usize), Just(3)], prop_oneof![Just(1usize), Just(3)])
        .prop_filter("B's window ends below A's", |&(_, _, _, ka, kb)| kb > (ka - 1) / 2 + (kb - 1) / 2)
        .prop_flat_map(|(h, w, c, ka, kb)| {
            let conv = |k| conv_values((h, w, c, c, (k, k), (1, 1), true), 0..=i32::MAX, -20..=0);
            let add = ((-128i32..=127, -128i32..=127, -128i32..=127), (1i32 << 30)..=i32::MAX, -4i32..=0, (1i32 << 30)..=i32::MAX, -22i32..=-1, act_range(), any::<bool>());
            (conv(ka), conv(kb), add, any::<bool>()).prop_map(move |(a, b, (zps, m, s, mo, so, act, half_first), x_first)| {
                let (m1, s1, m2, s2) = if half_first { (1 << 30, 0, m, s) } else { (m, s, 1 << 30, 0) };
                let add = Add {
                    len: h * w * c, input1_zp: zps.0, input2_zp: zps.1, output_zp: zps.2, left_shift: 20,
                    input1_multiplier: m1, input1_shift: s1, input2_multiplier: m2, input2_shift: s2,
                    output_multiplier: mo, output_shift: so, act_min: act.0, act_max: act.1,
                };
                (a, b, add, x_first)
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The fused residual block (conv, conv, ADD over the block's input, row by row) against
    /// the three reference kernels, with its output apart and written over its input.
    #[test]
    fn fused_residual_block_matches_reference((ca, cb, add, x_first) in residual_case(), layout in oc4_layout()) {
        let (ba, bb) = (build(&ca, layout), build(&cb, layout));
        let (a, b) = (conv_params(&ca, &ba, layout), conv_params(&cb, &bb, layout));
        prop_assert!(residual_block_s8_fast_supported(&a, &b, &add));
        let x = &ca.input;
        let y = reference_conv_pool(&a, None, x);
        let z = reference_conv_pool(&b, None, &y);
        let mut want = vec![0i8; x.len()];
        let (in1, in2) = if x_first { (x.as_slice(), z.as_slice()) } else { (z.as_slice(), x.as_slice()) };
        add_s8(&add, in1, in2, &mut want, &mut []).unwrap();
        let mut scratch = vec![0u8; residual_block_s8_fast_scratch_bytes(&a, &b)];
        let mut apart = vec![0i8; x.len()];
        residual_block_s8_fast_io(&a, &b, &add, x_first, &mut Io::Apart { input: x, output: &mut apart }, &mut scratch).unwrap();
        prop_assert_eq!(&apart, &want);
        let mut shared = x.clone();
        let n = shared.len();
        residual_block_s8_fast_io(&a, &b, &add, x_first, &mut Io::Shared { io: &mut shared, input: 0..n, output: 0..n, reverse: false }, &mut scratch).unwrap();
        prop_assert_eq!(&shared, &want);
    }
}

