//! Optimized int8 kernels for the Cortex-M4 (SMLAD/SXTB16 via [`crate::dsp`]), bit-exact with the
//! reference kernels, which stay the oracle (`shared/tests/kernels_prop.rs`, `tests/`).
//!
//! - Weights in [`WeightLayout::Oc4Quads`] order: one word per channel and quad of taps, so four
//!   output channels accumulate together from one widened input patch: per 16 MACs, two patch
//!   words, four weight words, eight SXTB16 and eight SMLAD.
//! - Inputs are widened once per output pixel into an i16 patch in scratch ("im2col").
//! - Conv + ReLU + max-pool are fused: requantization is monotonic, so the pool takes the max of
//!   the raw accumulators and requantizes once per pooled output; conv outputs that the pool would
//!   drop are never computed, and the conv tensor is never stored.
//! - A convolution with one input channel (MNIST's first layer) gets its own path: its weights
//!   are widened into scratch once per call.
//!
//! Each `*_supported` function says when a kernel applies; the engine falls back to the
//! reference kernels otherwise.

use super::{Conv2d, FullyConnected, Pool};
use crate::dsp::{pack16, smlad, sxtb16, sxtb16_ror8, widen_quad};
use crate::types::{expect_len, Padding, Requant, WeightLayout};
use crate::Error;

/// Words of a widened patch of `taps` int8 inputs (two i16 per word).
fn patch_words(taps: usize) -> usize {
    taps.div_ceil(2)
}

/// The 4-byte-aligned `u32` view of a byte slice, if it is one exactly.
fn words(bytes: &[i8]) -> Option<&[u32]> {
    // SAFETY: any bit pattern is a valid u32; align_to only returns the aligned middle.
    let (pre, mid, post) = unsafe { bytes.align_to::<u32>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

/// An aligned `u32` scratch area of `n` words inside `scratch` (which has 3 bytes of slack).
fn scratch_words(scratch: &mut [u8], n: usize) -> Result<&mut [u32], Error> {
    // SAFETY: any bit pattern is a valid u32.
    let (_, mid, _) = unsafe { scratch.align_to_mut::<u32>() };
    let available = mid.len();
    mid.get_mut(..n).ok_or(Error::BufferSize { expected: n, found: available })
}

/// Widen `src` (length a multiple of 4) minus the zero point into patch words.
#[inline(always)]
fn widen(src: &[i8], zp_pair: u32, dst: &mut [u32]) {
    for (q, d) in src.chunks_exact(4).zip(dst.chunks_exact_mut(2)) {
        let word = u32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]);
        let (a, b) = widen_quad(word, zp_pair);
        d[0] = a;
        d[1] = b;
    }
}

/// Four channels' dot products with one patch; `weights` holds the group's words in `layout`.
#[inline(always)]
fn dot_oc4(patch: &[u32], weights: &[u32], layout: WeightLayout) -> [i32; 4] {
    if layout == WeightLayout::Oc4PairsI16 {
        dot_oc4_i16(patch, weights)
    } else {
        dot_oc4_quads(patch, weights)
    }
}

// The dot products are kept out of line on purpose: inlined into a large caller, LLVM spills the
// four accumulators to the stack on every step; as leaf functions they stay in registers.

/// One quad of [`dot_oc4_i16`]'s loop: a patch LDRD, then per channel a weight LDRD and two SMLAD.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
macro_rules! oc4_i16_quad {
    () => {
        concat!(
            "ldrd {p0}, {p1}, [{pp}], #8\n",
            "ldrd {w0}, {w1}, [{pw}], #8\n",
            "smlad {a0}, {p0}, {w0}, {a0}\n",
            "smlad {a0}, {p1}, {w1}, {a0}\n",
            "ldrd {w0}, {w1}, [{pw}], #8\n",
            "smlad {a1}, {p0}, {w0}, {a1}\n",
            "smlad {a1}, {p1}, {w1}, {a1}\n",
            "ldrd {w0}, {w1}, [{pw}], #8\n",
            "smlad {a2}, {p0}, {w0}, {a2}\n",
            "smlad {a2}, {p1}, {w1}, {a2}\n",
            "ldrd {w0}, {w1}, [{pw}], #8\n",
            "smlad {a3}, {p0}, {w0}, {a3}\n",
            "smlad {a3}, {p1}, {w1}, {a3}",
        )
    };
}

/// [`dot_oc4`] for pre-widened weights: per quad 8 words, `(w0, w2), (w1, w3)` per channel.
/// On the M4: one LDRD of patch, four LDRD of weights and eight SMLAD per 16 MACs.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[inline(never)]
fn dot_oc4_i16(patch: &[u32], weights: &[u32]) -> [i32; 4] {
    let quads = (patch.len() / 2).min(weights.len() / 8);
    let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
    if quads == 0 {
        return [0; 4];
    }
    // SAFETY: reads `quads` x 2 patch words and `quads` x 8 weight words, all in bounds; both
    // slices are word-aligned (LDRD requires it): scratch_words and words() guarantee that.
    // An odd quad count runs the loop body once from its middle; then two quads per iteration.
    unsafe {
        core::arch::asm!(
            "lsrs {n}, {n}, #1",
            "bcc 2f",
            "adds {n}, {n}, #1",
            "b 3f",
            "2:",
            oc4_i16_quad!(),
            "3:",
            oc4_i16_quad!(),
            "subs {n}, {n}, #1",
            "bne 2b",
            pp = inout(reg) patch.as_ptr() => _,
            pw = inout(reg) weights.as_ptr() => _,
            n = inout(reg) quads => _,
            p0 = out(reg) _,
            p1 = out(reg) _,
            w0 = out(reg) _,
            w1 = out(reg) _,
            a0 = inout(reg) a0,
            a1 = inout(reg) a1,
            a2 = inout(reg) a2,
            a3 = inout(reg) a3,
            options(nostack, readonly),
        );
    }
    [a0, a1, a2, a3]
}

/// Portable [`dot_oc4_i16`]: the same sums.
#[cfg(not(all(target_arch = "arm", feature = "dsp")))]
#[inline(never)]
fn dot_oc4_i16(patch: &[u32], weights: &[u32]) -> [i32; 4] {
    let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
    for (p, w) in patch.chunks_exact(2).zip(weights.chunks_exact(8)) {
        let (p0, p1) = (p[0], p[1]);
        a0 = smlad(p1, w[1], smlad(p0, w[0], a0));
        a1 = smlad(p1, w[3], smlad(p0, w[2], a1));
        a2 = smlad(p1, w[5], smlad(p0, w[4], a2));
        a3 = smlad(p1, w[7], smlad(p0, w[6], a3));
    }
    [a0, a1, a2, a3]
}

/// [`dot_oc4`] for int8 quads, widened on the fly with SXTB16.
#[inline(never)]
fn dot_oc4_quads(patch: &[u32], weights: &[u32]) -> [i32; 4] {
    let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
    for (p, w) in patch.chunks_exact(2).zip(weights.chunks_exact(4)) {
        let (p0, p1) = (p[0], p[1]);
        a0 = smlad(p1, sxtb16_ror8(w[0]), smlad(p0, sxtb16(w[0]), a0));
        a1 = smlad(p1, sxtb16_ror8(w[1]), smlad(p0, sxtb16(w[1]), a1));
        a2 = smlad(p1, sxtb16_ror8(w[2]), smlad(p0, sxtb16(w[2]), a2));
        a3 = smlad(p1, sxtb16_ror8(w[3]), smlad(p0, sxtb16(w[3]), a3));
    }
    [a0, a1, a2, a3]
}

fn all_shifts_non_positive(r: &Requant) -> bool {
    r.shifts.iter().all(|s| s <= 0)
}

// ---------------------------------------------------------------------------------------------
// Convolution with Oc4Quads weights (input channels a multiple of 4 per kernel row)

/// Words per group of 4 channels for `taps` taps in an OC4 layout.
fn group_words(layout: WeightLayout, taps: usize) -> usize {
    if layout == WeightLayout::Oc4PairsI16 {
        2 * taps
    } else {
        taps
    }
}

/// VALID padding, weights in an OC4 layout, whole kernel rows of quads, aligned weights.
pub fn conv2d_s8_fast_supported(p: &Conv2d) -> bool {
    p.padding == Padding::Valid
        && p.layout.needs_quads()
        && (p.kernel_w as usize * p.input.c as usize).is_multiple_of(4)
        && words(p.weights).is_some()
}

pub fn conv2d_s8_fast_scratch_bytes(p: &Conv2d) -> usize {
    4 * patch_words(p.kernel_h as usize * p.kernel_w as usize * p.input.c as usize) + 3
}

/// Build the widened patch of conv output pixel `(oy, ox)`.
#[inline(always)]
fn conv_patch(p: &Conv2d, input: &[i8], oy: usize, ox: usize, zp_pair: u32, patch: &mut [u32]) {
    let (iw, ic) = (p.input.w as usize, p.input.c as usize);
    let (kh, kw) = (p.kernel_h as usize, p.kernel_w as usize);
    let row = kw * ic;
    for ky in 0..kh {
        let iy = oy * p.stride_h as usize + ky;
        let start = (iy * iw + ox * p.stride_w as usize) * ic;
        widen(&input[start..start + row], zp_pair, &mut patch[ky * row / 2..(ky + 1) * row / 2]);
    }
}

fn check_conv(p: &Conv2d, input: &[i8]) -> Result<(), Error> {
    expect_len(input.len(), p.input.len()?)?;
    let taps = p.kernel_h as usize * p.kernel_w as usize * p.input.c as usize;
    expect_len(p.weights.len(), p.layout.bytes(p.output.c as usize, taps).unwrap_or(usize::MAX))?;
    expect_len(p.bias.len(), p.output.c as usize)
}

pub fn conv2d_s8_fast(p: &Conv2d, input: &[i8], output: &mut [i8], scratch: &mut [u8]) -> Result<(), Error> {
    check_conv(p, input)?;
    expect_len(output.len(), p.output.len()?)?;
    let weights = words(p.weights).ok_or(Error::BadParameter { layer: 0, what: "weights not word-aligned" })?;
    let taps = p.kernel_h as usize * p.kernel_w as usize * p.input.c as usize;
    let patch = scratch_words(scratch, patch_words(taps))?;
    let zp_pair = pack16(p.input_zp, p.input_zp);
    let (oh, ow, oc) = (p.output.h as usize, p.output.w as usize, p.output.c as usize);
    for oy in 0..oh {
        for ox in 0..ow {
            conv_patch(p, input, oy, ox, zp_pair, patch);
            let out = &mut output[(oy * ow + ox) * oc..][..oc];
            for (g, w) in weights.chunks_exact(group_words(p.layout, taps)).enumerate() {
                let acc = dot_oc4(patch, w, p.layout);
                for (j, a) in acc.iter().enumerate() {
                    let c = 4 * g + j;
                    if c < oc {
                        out[c] = p.requant.apply(a + p.bias.get(c), c);
                    }
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Fused convolution + max-pool

/// A conv as [`conv2d_s8_fast_supported`] followed by a VALID max-pool over its output, with
/// right shifts only (so requantization is monotonic in the accumulator).
pub fn conv2d_maxpool_s8_fast_supported(conv: &Conv2d, pool: &Pool) -> bool {
    conv2d_s8_fast_supported(conv) && pool.padding == Padding::Valid && all_shifts_non_positive(&conv.requant)
}

pub fn conv2d_maxpool_s8_fast_scratch_bytes(conv: &Conv2d, pool: &Pool) -> usize {
    let window = pool.kernel_h as usize * pool.kernel_w as usize;
    4 * window * patch_words(conv.kernel_h as usize * conv.kernel_w as usize * conv.input.c as usize) + 3
}

/// The final value of a pooled output from the max accumulator of its window.
#[inline(always)]
fn pooled(conv: &Conv2d, pool: &Pool, max_acc: i32, c: usize) -> i8 {
    conv.requant.apply(max_acc + conv.bias.get(c), c).clamp(pool.act_min, pool.act_max)
}

pub fn conv2d_maxpool_s8_fast(conv: &Conv2d, pool: &Pool, input: &[i8], output: &mut [i8], scratch: &mut [u8]) -> Result<(), Error> {
    check_conv(conv, input)?;
    expect_len(output.len(), pool.output.len()?)?;
    let weights = words(conv.weights).ok_or(Error::BadParameter { layer: 0, what: "weights not word-aligned" })?;
    let taps = conv.kernel_h as usize * conv.kernel_w as usize * conv.input.c as usize;
    let (ph, pw, oc) = (pool.output.h as usize, pool.output.w as usize, conv.output.c as usize);
    let (kh, kw, sh, sw) = (pool.kernel_h as usize, pool.kernel_w as usize, pool.stride_h as usize, pool.stride_w as usize);
    let words_per_patch = patch_words(taps);
    let patches = scratch_words(scratch, kh * kw * words_per_patch)?;
    let zp_pair = pack16(conv.input_zp, conv.input_zp);
    for py in 0..ph {
        for px in 0..pw {
            // The patches of every conv pixel under the pooling window, built once.
            for (slot, patch) in patches.chunks_exact_mut(words_per_patch).enumerate() {
                conv_patch(conv, input, py * sh + slot / kw, px * sw + slot % kw, zp_pair, patch);
            }
            let out = &mut output[(py * pw + px) * oc..][..oc];
            for (g, w) in weights.chunks_exact(group_words(conv.layout, taps)).enumerate() {
                let mut max = [i32::MIN; 4];
                for patch in patches.chunks_exact(words_per_patch) {
                    let acc = dot_oc4(patch, w, conv.layout);
                    for j in 0..4 {
                        max[j] = max[j].max(acc[j]);
                    }
                }
                for (j, &m) in max.iter().enumerate() {
                    let c = 4 * g + j;
                    if c < oc {
                        out[c] = pooled(conv, pool, m, c);
                    }
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One input channel: conv + max-pool

/// One input channel, canonical weights, VALID conv, VALID max-pool, right shifts only.
pub fn conv2d_c1_maxpool_s8_fast_supported(conv: &Conv2d, pool: &Pool) -> bool {
    conv.input.c == 1
        && conv.layout == WeightLayout::Canonical
        && conv.padding == Padding::Valid
        && pool.padding == Padding::Valid
        && all_shifts_non_positive(&conv.requant)
}

pub fn conv2d_c1_maxpool_s8_fast_scratch_bytes(conv: &Conv2d, pool: &Pool) -> usize {
    let pairs = patch_words(conv.kernel_h as usize * conv.kernel_w as usize);
    let window = pool.kernel_h as usize * pool.kernel_w as usize;
    let row = pool.output.w as usize;
    4 * (pairs * conv.output.c as usize + row * window * pairs + row) + 3
}

/// Channel by channel over one row of pooled outputs at a time: a channel's widened weights
/// stay in registers across the row, whose patches are built once for all channels.
pub fn conv2d_c1_maxpool_s8_fast(conv: &Conv2d, pool: &Pool, input: &[i8], output: &mut [i8], scratch: &mut [u8]) -> Result<(), Error> {
    expect_len(input.len(), conv.input.len()?)?;
    expect_len(output.len(), pool.output.len()?)?;
    let (iw, oc) = (conv.input.w as usize, conv.output.c as usize);
    let (ckh, ckw) = (conv.kernel_h as usize, conv.kernel_w as usize);
    let taps = ckh * ckw;
    expect_len(conv.weights.len(), oc * taps)?;
    expect_len(conv.bias.len(), oc)?;
    let pairs = patch_words(taps);
    let (kh, kw, sh, sw) = (pool.kernel_h as usize, pool.kernel_w as usize, pool.stride_h as usize, pool.stride_w as usize);
    let window = kh * kw;
    let (ph, pw) = (pool.output.h as usize, pool.output.w as usize);
    let all = scratch_words(scratch, pairs * oc + pw * window * pairs + pw)?;
    let (wide, rest) = all.split_at_mut(pairs * oc);
    let (patches, maxes) = rest.split_at_mut(pw * window * pairs);

    // Weights widened to i16 pairs, taps in natural order, an odd last tap paired with 0.
    for (c, dst) in wide.chunks_exact_mut(pairs).enumerate() {
        let w = &conv.weights[c * taps..(c + 1) * taps];
        for (k, d) in dst.iter_mut().enumerate() {
            *d = pack16(w[2 * k] as i32, w.get(2 * k + 1).map_or(0, |&x| x as i32));
        }
    }
    let (sy, sx) = (conv.stride_h as usize, conv.stride_w as usize);
    let zp = conv.input_zp;
    for py in 0..ph {
        // The patches of every conv pixel under every pooling window of this row.
        for (n, patch) in patches.chunks_exact_mut(pairs).enumerate() {
            let (px, slot) = (n / window, n % window);
            let (y0, x0) = ((py * sh + slot / kw) * sy, (px * sw + slot % kw) * sx);
            let mut k = 0;
            let mut low: Option<i32> = None;
            for ky in 0..ckh {
                for &x in &input[(y0 + ky) * iw + x0..][..ckw] {
                    let v = x as i32 - zp;
                    match low.take() {
                        None => low = Some(v),
                        Some(l) => {
                            patch[k] = pack16(l, v);
                            k += 1;
                        }
                    }
                }
            }
            if let Some(l) = low {
                patch[k] = pack16(l, 0);
            }
        }
        for (c, w) in wide.chunks_exact(pairs).enumerate() {
            window_maxima(patches, w, window, maxes);
            let (bias, multiplier, shift) = (conv.bias.get(c), conv.requant.multipliers.get(c), conv.requant.shifts.get(c));
            let r = &conv.requant;
            for (o, &m) in output[py * pw * oc + c..].iter_mut().step_by(oc).zip(maxes.iter()) {
                let v = crate::fixedpoint::requantize(m as i32 + bias, multiplier, shift, r.output_zp, r.act_min, r.act_max);
                *o = v.clamp(pool.act_min, pool.act_max);
            }
        }
    }
    Ok(())
}

/// For each pooled output `i`: `maxes[i]` = the largest dot product of `weights` with the
/// `window` consecutive patches of that output.
#[inline(never)]
fn window_maxima(patches: &[u32], weights: &[u32], window: usize, maxes: &mut [u32]) {
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    if weights.len() == 5 && window == 4 && patches.len() >= maxes.len() * 20 {
        return window_maxima_3x3_2x2(patches, weights, maxes);
    }
    for (m, group) in maxes.iter_mut().zip(patches.chunks_exact(window * weights.len())) {
        let mut max = i32::MIN;
        for patch in group.chunks_exact(weights.len()) {
            let mut acc = 0;
            for (&x, &k) in patch.iter().zip(weights) {
                acc = smlad(x, k, acc);
            }
            max = max.max(acc);
        }
        *m = max as u32;
    }
}

/// [`window_maxima`] for a 3x3 kernel (5 weight words, kept in registers) under a 2x2 pool:
/// per pooled output 20 loads, 20 multiply-accumulates and 3 compares.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
fn window_maxima_3x3_2x2(patches: &[u32], weights: &[u32], maxes: &mut [u32]) {
    let count = maxes.len();
    if count == 0 {
        return;
    }
    macro_rules! dot5 {
        ($acc:literal) => {
            concat!(
                "ldr {x}, [{pp}], #4\n",
                "smuad ", $acc, ", {x}, {w0}\n",
                "ldr {x}, [{pp}], #4\n",
                "smlad ", $acc, ", {x}, {w1}, ", $acc, "\n",
                "ldr {x}, [{pp}], #4\n",
                "smlad ", $acc, ", {x}, {w2}, ", $acc, "\n",
                "ldr {x}, [{pp}], #4\n",
                "smlad ", $acc, ", {x}, {w3}, ", $acc, "\n",
                "ldr {x}, [{pp}], #4\n",
                "smlad ", $acc, ", {x}, {w4}, ", $acc, "\n",
            )
        };
    }
    // SAFETY: reads count x 20 patch words (checked by the caller) and writes `count` maxima.
    unsafe {
        core::arch::asm!(
            "2:",
            dot5!("{max}"),
            dot5!("{acc}"),
            "cmp {acc}, {max}",
            "it gt",
            "movgt {max}, {acc}",
            dot5!("{acc}"),
            "cmp {acc}, {max}",
            "it gt",
            "movgt {max}, {acc}",
            dot5!("{acc}"),
            "cmp {acc}, {max}",
            "it gt",
            "movgt {max}, {acc}",
            "str {max}, [{out}], #4",
            "subs {n}, {n}, #1",
            "bne 2b",
            pp = inout(reg) patches.as_ptr() => _,
            out = inout(reg) maxes.as_mut_ptr() => _,
            n = inout(reg) count => _,
            x = out(reg) _,
            acc = out(reg) _,
            max = out(reg) _,
            w0 = in(reg) weights[0],
            w1 = in(reg) weights[1],
            w2 = in(reg) weights[2],
            w3 = in(reg) weights[3],
            w4 = in(reg) weights[4],
            options(nostack),
        );
    }
}
// ---------------------------------------------------------------------------------------------
// Fully connected with Oc4Quads weights

pub fn fully_connected_s8_fast_supported(p: &FullyConnected) -> bool {
    p.layout.needs_quads() && p.input_len.is_multiple_of(4) && words(p.weights).is_some()
}

pub fn fully_connected_s8_fast_scratch_bytes(p: &FullyConnected) -> usize {
    4 * patch_words(p.input_len) + 3
}

pub fn fully_connected_s8_fast(p: &FullyConnected, input: &[i8], output: &mut [i8], scratch: &mut [u8]) -> Result<(), Error> {
    expect_len(input.len(), p.input_len)?;
    expect_len(output.len(), p.output_len)?;
    expect_len(p.weights.len(), p.layout.bytes(p.output_len, p.input_len).unwrap_or(usize::MAX))?;
    expect_len(p.bias.len(), p.output_len)?;
    let weights = words(p.weights).ok_or(Error::BadParameter { layer: 0, what: "weights not word-aligned" })?;
    let patch = scratch_words(scratch, patch_words(p.input_len))?;
    widen(input, pack16(p.input_zp, p.input_zp), patch);
    for (g, w) in weights.chunks_exact(group_words(p.layout, p.input_len)).enumerate() {
        let acc = dot_oc4(patch, w, p.layout);
        for (j, a) in acc.iter().enumerate() {
            let c = 4 * g + j;
            if c < p.output_len {
                output[c] = p.requant.apply(a + p.bias.get(c), c);
            }
        }
    }
    Ok(())
}
