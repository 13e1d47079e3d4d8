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
//! - Weights in [`WeightLayout::Oc4Int4`] (two a byte) are widened like int8 quads, a group at a
//!   time, to 16 times their value; the exact sums are divided by 16.
//! - Requantization with SMMULR where it is provably TFLM's (see [`Fast`]), TFLM's general
//!   arithmetic elsewhere.
//!
//! Each `*_supported` function says when a kernel applies; the engine falls back to the
//! reference kernels otherwise.

use super::{Add, Conv2d, DepthwiseConv2d, FullyConnected, Pool};
use crate::dsp::{smlabb, smlatt};
use crate::dsp::{copy_bytes, copy_rows, fill_bytes, fill_words, offset_pair, pack16, sadd16, smlad, smmulr, ssub16, sxtb16, sxtb16_ror8, widen_quad};
use crate::types::{as_i8_mut, expect_len, sub, sub_mut, I32Le, Padding, Requant, Shape, WeightLayout};
use crate::types::Bounded;
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

/// All aligned `u32` words of `scratch`.
fn all_scratch_words(scratch: &mut [u8]) -> &mut [u32] {
    // SAFETY: any bit pattern is a valid u32.
    let (_, mid, _) = unsafe { scratch.align_to_mut::<u32>() };
    mid
}

/// Patch bytes the blocked compact kernels ask for: with [`WeightLayout::Oc4Quads`] weights, a
/// block of output pixels has its patches built first, then each group of four channels is
/// widened once into i16 pairs and runs the i16 dot product over the whole block, so the int8
/// weights cost one SXTB16 pair per block instead of one per pixel.
const BLOCK_PATCH_BYTES: usize = 12 * 1024;

/// How many units (pixels, or pooled outputs) of `unit_words` patch words a blocked kernel
/// handles at once, given `words` of scratch besides the widened group: at most `units`.
fn block_units(words: usize, unit_words: usize, units: usize) -> usize {
    (words / unit_words.max(1)).min(units)
}

/// The scratch bytes of a blocked compact kernel for `units` units of `unit_words` patch words
/// and `taps` stored taps, or `None` when a block would hold fewer than `min_units`.
fn blocked_scratch_bytes(unit_words: usize, units: usize, taps: usize, min_units: usize) -> Option<usize> {
    let block = block_units(BLOCK_PATCH_BYTES / 4, unit_words, units).max(1);
    (block >= min_units).then_some(4 * (block * unit_words + 2 * taps) + 3)
}

/// One group of four channels' int8 quads widened into [`dot_oc4_i16`]'s order: per quad and
/// channel `(w0, w2), (w1, w3)`.
#[inline(never)]
fn widen_group(quads: &[u32], wide: &mut [u32]) {
    let done = widen_words_fast(quads, wide);
    let (rest, wide) = (quads.get(done..).unwrap_or(&[]), wide.get_mut(2 * done..).unwrap_or(&mut []));
    for (&w, d) in rest.iter().zip(wide.as_chunks_mut::<2>().0) {
        *d = [sxtb16(w), sxtb16_ror8(w)];
    }
}

/// One group of four channels' [`WeightLayout::Oc4Int4`] words widened into [`dot_oc4_i16`]'s
/// order, 16 times the weights (see [`int4_sums`]): per octet, quad `2q` from the low nibbles,
/// quad `2q + 1` from the high ones.
#[inline(never)]
fn widen_group_int4(octets: &[u32], wide: &mut [u32]) {
    for (words, pairs) in octets.chunks_exact(4).zip(wide.as_chunks_mut::<2>().0.chunks_exact_mut(8)) {
        let (low, high) = pairs.split_at_mut(4);
        for ((&w, l), h) in words.iter().zip(low).zip(high) {
            let (lo, hi) = ((w << 4) & 0xF0F0_F0F0, w & 0xF0F0_F0F0);
            *l = [sxtb16(lo), sxtb16_ror8(lo)];
            *h = [sxtb16(hi), sxtb16_ror8(hi)];
        }
    }
}

/// A group's weights widened for [`dot_oc4_i16`], whichever compact layout holds them.
#[inline(always)]
fn widen_any(layout: WeightLayout, group: &[u32], wide: &mut [u32]) {
    if layout == WeightLayout::Oc4Int4 {
        widen_group_int4(group, wide)
    } else {
        widen_group(group, wide)
    }
}

/// The accumulators from dot products with widened weights of `layout`: int4 weights are
/// widened at 16 times their value, so the sums are exactly 16 times (the shift is exact).
#[inline(always)]
fn int4_sums(layout: WeightLayout, acc: [i32; 4]) -> [i32; 4] {
    if layout == WeightLayout::Oc4Int4 {
        acc.map(|a| a >> 4)
    } else {
        acc
    }
}


/// [`widen_group`]'s bulk, two words per LDRD and two STRD per word pair: 4 instructions a word
/// where the compiled loop takes 7. Returns the words done (a multiple of 4).
#[cfg(all(target_arch = "arm", feature = "dsp"))]
fn widen_words_fast(quads: &[u32], wide: &mut [u32]) -> usize {
    let fours = quads.len().min(wide.len() / 2) / 4;
    if fours == 0 {
        return 0;
    }
    macro_rules! pair {
        () => {
            concat!(
                "ldrd {a}, {b}, [{src}], #8\n",
                "sxtb16 {c}, {a}, ror #8\n",
                "sxtb16 {a}, {a}\n",
                "sxtb16 {d}, {b}, ror #8\n",
                "sxtb16 {b}, {b}\n",
                "strd {a}, {c}, [{dst}], #8\n",
                "strd {b}, {d}, [{dst}], #8\n",
            )
        };
    }
    // SAFETY: reads 4 x `fours` words of `quads` and writes 8 x `fours` words of `wide`, both in
    // bounds and word-aligned (LDRD/STRD need it: `words()` and the scratch split guarantee it).
    unsafe {
        core::arch::asm!(
            "2:",
            pair!(),
            pair!(),
            "subs {k}, {k}, #1",
            "bne 2b",
            src = inout(reg) quads.as_ptr() => _,
            dst = inout(reg) wide.as_mut_ptr() => _,
            k = inout(reg) fours => _,
            a = out(reg) _,
            b = out(reg) _,
            c = out(reg) _,
            d = out(reg) _,
            options(nostack),
        );
    }
    4 * fours
}

#[cfg(not(all(target_arch = "arm", feature = "dsp")))]
fn widen_words_fast(_: &[u32], _: &mut [u32]) -> usize {
    0
}

/// Widen `src` (length a multiple of 4) minus the zero point into patch words.
#[inline(always)]
fn widen(src: &[i8], input_offset: u32, dst: &mut [u32]) {
    for (q, d) in src.as_chunks::<4>().0.iter().zip(dst.as_chunks_mut::<2>().0) {
        let word = u32::from_le_bytes(q.map(|v| v as u8));
        let (a, b) = widen_quad(word, input_offset);
        *d = [a, b];
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

/// One quad of the Winograd rounds of [`dot_rounds_i16`]: a patch LDRD, then per channel a
/// weight LDRD and two SMLAD.
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

/// One quad of [`dot_oc4_i16_body`] and [`pointwise_rounds`]: the patch pair by LDRD, each two
/// channels' four weight words by one LDM (ascending registers, loaded in address order:
/// channel 0's pair of words then channel 1's), eight SMLAD. 11 instructions (44 bytes) for 16
/// MACs, where two LDRD per two channels took 13.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
macro_rules! oc4_i16_quad_ldm {
    () => {
        concat!(
            "ldrd r10, r11, [r12], #8\n",
            "ldm lr!, {{r4, r5, r8, r9}}\n",
            "smlad r0, r10, r4, r0\n",
            "smlad r0, r11, r5, r0\n",
            "smlad r1, r10, r8, r1\n",
            "smlad r1, r11, r9, r1\n",
            "ldm lr!, {{r4, r5, r8, r9}}\n",
            "smlad r2, r10, r4, r2\n",
            "smlad r2, r11, r5, r2\n",
            "smlad r3, r10, r8, r3\n",
            "smlad r3, r11, r9, r3\n",
        )
    };
}

/// [`oc4_i16_quad_ldm`] as a round's first quad: each sum starts from its first product
/// (SMUAD), which spares zeroing the four sums.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
macro_rules! oc4_i16_quad_head {
    () => {
        concat!(
            "ldrd r10, r11, [r12], #8\n",
            "ldm lr!, {{r4, r5, r8, r9}}\n",
            "smuad r0, r10, r4\n",
            "smlad r0, r11, r5, r0\n",
            "smuad r1, r10, r8\n",
            "smlad r1, r11, r9, r1\n",
            "ldm lr!, {{r4, r5, r8, r9}}\n",
            "smuad r2, r10, r4\n",
            "smlad r2, r11, r5, r2\n",
            "smuad r3, r10, r8\n",
            "smlad r3, r11, r9, r3\n",
        )
    };
}

/// [`dot_oc4`] for pre-widened weights: per quad 8 words, `(w0, w2), (w1, w3)` per channel.
/// On the M4: one LDRD of patch, two LDM of weights and eight SMLAD per 16 MACs.
#[inline(never)]
fn dot_oc4_i16(patch: &[u32], weights: &[u32]) -> [i32; 4] {
    dot_oc4_i16_body(patch, weights)
}

/// [`dot_oc4_i16`]'s body, for callers that loop over many dot products themselves: quads as
/// in [`oc4_i16_quad_ldm`], two a pass (an odd count enters the second), until the patch
/// pointer reaches the patch's end (kept on the stack: the twelve registers hold the patch pair,
/// four weight words, the four sums and the two pointers).
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[inline(always)]
fn dot_oc4_i16_body(patch: &[u32], weights: &[u32]) -> [i32; 4] {
    let quads = (patch.len() / 2).min(weights.len() / 8);
    let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
    if quads == 0 {
        return [0; 4];
    }
    // SAFETY: reads `quads` x 2 patch words and `quads` x 8 weight words, all in bounds; both
    // slices are word-aligned (LDRD and LDM require it): scratch_words and words() guarantee
    // that. The word below sp holds the patch's end, restored before the end.
    unsafe {
        core::arch::asm!(
            "sub sp, sp, #8",
            "add r4, r12, r5, lsl #3",
            "str r4, [sp]",
            "tst r5, #1",
            "beq 2f",
            "b 3f",
            "2:",
            oc4_i16_quad_ldm!(),
            "3:",
            oc4_i16_quad_ldm!(),
            "ldr r4, [sp]",
            "cmp r12, r4",
            "bne 2b",
            "add sp, sp, #8",
            inout("r0") a0,
            inout("r1") a1,
            inout("r2") a2,
            inout("r3") a3,
            out("r4") _,
            inout("r5") quads => _,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
            inout("r12") patch.as_ptr() => _,
            inout("lr") weights.as_ptr() => _,
            options(readonly),
        );
    }
    [a0, a1, a2, a3]
}

/// Portable [`dot_oc4_i16_body`]: the same sums.
#[cfg(not(all(target_arch = "arm", feature = "dsp")))]
#[inline(always)]
fn dot_oc4_i16_body(patch: &[u32], weights: &[u32]) -> [i32; 4] {
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

/// [`dot_oc4`] of each whole group of `weights` (`group` words) into `acc`, as many as `acc`
/// holds; returns how many.
fn dot_groups(patch: &[u32], weights: &[u32], group: usize, layout: WeightLayout, acc: &mut [[i32; 4]]) -> usize {
    let count = (weights.len() / group.max(1)).min(acc.len());
    let quads = patch.len() / 2;
    if layout == WeightLayout::Oc4PairsI16 && group == 8 * quads {
        dot_rounds_i16::<false>(patch, weights, quads, acc.get_mut(..count).unwrap_or(&mut []));
    } else {
        for (a, w) in acc.iter_mut().zip(weights.chunks_exact(group.max(1))) {
            *a = dot_oc4(patch, w, layout);
        }
    }
    count
}

/// [`dot_oc4_i16`] of `acc.len()` rounds in one loop, each of `2 quads` patch words against the
/// round's `8 quads` weight words (the weights of consecutive rounds follow each other): the same
/// patch every round (`ADVANCE` false: the channel groups of one pixel, where a call per group
/// costs more than the sums of a small pointwise conv), or the next `2 quads` patch words (true:
/// the 16 positions of a Winograd tile).
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[inline(never)]
fn dot_rounds_i16<const ADVANCE: bool>(patch: &[u32], weights: &[u32], quads: usize, acc: &mut [[i32; 4]]) {
    let rounds = acc.len();
    let patch_words = if ADVANCE { 2 * quads * rounds } else { 2 * quads };
    if rounds == 0 || quads == 0 || patch.len() < patch_words || weights.len() < 8 * quads * rounds {
        return;
    }
    let sums = acc.as_mut_ptr();
    if !ADVANCE {
        // SAFETY: the checks above are pointwise_rounds' guarantees.
        return unsafe { pointwise_rounds(patch.as_ptr(), weights.as_ptr(), quads, sums, rounds) };
    }
    // SAFETY: reads `patch_words` patch words and 8 x `quads` x `rounds` weight words (both
    // checked above), writes the 4 x `rounds` words of `acc`; all word-aligned (LDRD and STRD
    // require it: scratch_words and words() guarantee it). The 8 bytes below sp hold the quad
    // count and the end of `acc`, restored before the end. Per round, the 2-quad body runs from
    // its middle for an odd quad count, as in dot_oc4_i16; the patch runs on from round to
    // round (the Winograd tile's next position).
    unsafe {
        core::arch::asm!(
            "sub sp, sp, #8",
            "str {a0}, [sp, #4]",
            "str {n}, [sp]",
            "4:",
            "ldr {n}, [sp]",
            "movs {a0}, #0",
            "movs {a1}, #0",
            "umull {a2}, {a3}, {a0}, {a0}",
            "lsrs {n}, {n}, #1",
            "bcc 2f",
            "adds {n}, {n}, #1",
            "b 3f",
            "2:",
            oc4_i16_quad!(),
            "3:",
            // A quad is 52 bytes (13 wide instructions): the 2-quad body's halves match.
            ".if 3b - 2b - 52",
            ".error \"oc4_i16_quad is not 52 bytes\"",
            ".endif",
            oc4_i16_quad!(),
            "subs {n}, {n}, #1",
            "bne 2b",
            "strd {a0}, {a1}, [{pm}], #8",
            "strd {a2}, {a3}, [{pm}], #8",
            "ldr {n}, [sp, #4]",
            "cmp {pm}, {n}",
            "bne 4b",
            "add sp, sp, #8",
            pp = inout(reg) patch.as_ptr() => _,
            pw = inout(reg) weights.as_ptr() => _,
            pm = inout(reg) sums => _,
            n = inout(reg) quads => _,
            p0 = out(reg) _,
            p1 = out(reg) _,
            w0 = out(reg) _,
            w1 = out(reg) _,
            a0 = inout(reg) sums.wrapping_add(rounds) => _,
            a1 = out(reg) _,
            a2 = out(reg) _,
            a3 = out(reg) _,
        )
    }
}

/// [`dot_rounds_i16`] with the same patch every round (the channel groups of one pixel): per
/// round the first quad starts the four sums ([`oc4_i16_quad_head`]), the other `quads - 1` run
/// 4 a pass in [`oc4_i16_quad_ldm`]'s body, entered `(quads - 1) & 3` quads before its end
/// check (at the check for a multiple of 4, where it branches back to the start), until the patch
/// pointer reaches the patch's end (no counter: the twelve registers hold the patch pair, four
/// weight words, four sums and the two pointers), and the sums are stored by one STM.
///
/// # Safety
/// `patch` holds `2 quads` words, `weights` `8 quads rounds`, `sums` `4 rounds`; all
/// word-aligned; `quads` and `rounds` are at least 1.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[inline(always)]
unsafe fn pointwise_rounds(patch: *const u32, weights: *const u32, quads: usize, sums: *mut [i32; 4], rounds: usize) {
    // SAFETY: the caller's guarantees. The 24 bytes below sp hold the sums pointer, the sums'
    // end, the patch start, the loop's entry (Thumb bit set for the `ldr pc`) and the patch's
    // end, restored before the end. The `.p2align` before the ADR makes the function's section
    // 4-byte aligned: ADR adds its offset to the PC rounded down to a word, and the assembler
    // resolves it as if the section were aligned (see `cargo xtask no-panic`'s alignment check).
    unsafe {
        core::arch::asm!(
            "sub sp, sp, #24",
            "str r0, [sp]",
            "str r1, [sp, #4]",
            "str r12, [sp, #8]",
            "add r1, r12, r2, lsl #3",
            "str r1, [sp, #16]",
            ".p2align 2",
            // The head takes the first quad; the other `quads - 1` enter the loop
            // `(quads - 1) & 3` quads before its end check (none left: at the check).
            "adr r1, 5f",
            "adds r2, r2, #3",
            "and r2, r2, #3",
            "movs r3, #44",
            "mls r1, r2, r3, r1",
            "orr r1, r1, #1",
            "str r1, [sp, #12]",
            "4:",
            "ldr r12, [sp, #8]",
            oc4_i16_quad_head!(),
            "ldr pc, [sp, #12]",
            "2:",
            oc4_i16_quad_ldm!(),
            "3:",
            // The entry takes a quad as 44 bytes (11 wide instructions).
            ".if 3b - 2b - 44",
            ".error \"oc4_i16_quad_ldm is not 44 bytes\"",
            ".endif",
            oc4_i16_quad_ldm!(),
            oc4_i16_quad_ldm!(),
            oc4_i16_quad_ldm!(),
            "5:",
            ".if 5b - 2b - 176",
            ".error \"the pointwise loop is not 4 quads\"",
            ".endif",
            "ldr r4, [sp, #16]",
            "cmp r12, r4",
            "bne 2b",
            "ldr r4, [sp]",
            "stm r4!, {{r0, r1, r2, r3}}",
            "str r4, [sp]",
            "ldr r5, [sp, #4]",
            "cmp r4, r5",
            "bne 4b",
            "add sp, sp, #24",
            inout("r0") sums => _,
            inout("r1") sums.wrapping_add(rounds) => _,
            inout("r2") quads => _,
            out("r3") _,
            out("r4") _,
            out("r5") _,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
            inout("r12") patch => _,
            inout("lr") weights => _,
        )
    }
}

/// One quad of [`pair_rounds`] ([`WeightLayout::Oc4SplitI16`] weights, the interleaved patch):
/// per patch word, one LDM of both pixels' words (r0, r1), then two LDM of two channels'
/// weights each (r2, r3), every weight word applied to both pixels by two SMLAD: 32 MACs in
/// 34 cycles (six 3-cycle LDM, sixteen SMLAD), 22 instructions.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
macro_rules! pair_quad {
    () => {
        concat!(
            pair_word!(),
            pair_word!(),
        )
    };
}

#[cfg(all(target_arch = "arm", feature = "dsp"))]
macro_rules! pair_word {
    () => {
        concat!(
            "ldm r6!, {{r0, r1}}\n",
            "ldm r7!, {{r2, r3}}\n",
            "smlad r4, r0, r2, r4\n",
            "smlad r10, r1, r2, r10\n",
            "smlad r5, r0, r3, r5\n",
            "smlad r11, r1, r3, r11\n",
            "ldm r7!, {{r2, r3}}\n",
            "smlad r8, r0, r2, r8\n",
            "smlad r12, r1, r2, r12\n",
            "smlad r9, r0, r3, r9\n",
            "smlad lr, r1, r3, lr\n",
        )
    };
}

/// The sums of `rounds` channel groups for two pixels of a pointwise conv in one loop: the
/// four sums of each pixel stay in eight registers (r4, r5, r8, r9 for A, r10, r11, r12, lr
/// for B) while each weight word serves both pixels, which halves the weight loads per MAC of
/// [`pointwise_rounds`] (1.06 cycles a MAC in the quads, against 1.31). Four quads a pass,
/// entered `quads & 3` quads before the end check as in [`pointwise_rounds`]. A's sums go to
/// `sums[..rounds]`, B's to `sums[rounds..2 rounds]`.
///
/// # Safety
/// `patch` holds `4 quads` words (word `j` of A's widened patch at `2j`, of B's at `2j + 1`),
/// `weights` `8 quads rounds` words in [`WeightLayout::Oc4SplitI16`]'s order, `sums` `2 rounds`
/// groups; all word-aligned; `quads` and `rounds` are at least 1.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[inline(never)]
unsafe fn pair_rounds(patch: *const u32, weights: *const u32, quads: usize, sums: *mut [i32; 4], rounds: usize) {
    // SAFETY: the caller's guarantees. r6 and r7 (reserved to the compiler, so not operands)
    // are the patch and weight pointers, saved and restored here; the 24 bytes below them hold
    // A's and B's next sums, A's end, the patch's start, its end and the loop's entry (Thumb
    // bit set for the `ldr pc`). The `.p2align` before the ADR: see [`pointwise_rounds`].
    unsafe {
        core::arch::asm!(
            "push {{r6, r7}}",
            "sub sp, sp, #24",
            "mov r7, r1",
            "str r3, [sp]",
            "add r4, r3, r4, lsl #4",
            "str r4, [sp, #4]",
            "str r4, [sp, #8]",
            "str r0, [sp, #12]",
            "add r1, r0, r2, lsl #4",
            "str r1, [sp, #16]",
            ".p2align 2",
            "adr r1, 5f",
            "and r2, r2, #3",
            "movs r3, #76",
            "mls r1, r2, r3, r1",
            "orr r1, r1, #1",
            "str r1, [sp, #20]",
            "4:",
            "ldr r6, [sp, #12]",
            "movs r0, #0",
            "umull r4, r5, r0, r0",
            "umull r8, r9, r0, r0",
            "umull r10, r11, r0, r0",
            "umull r12, lr, r0, r0",
            "ldr pc, [sp, #20]",
            "2:",
            pair_quad!(),
            "3:",
            // The entry takes a quad as 76 bytes (six narrow LDM, sixteen SMLAD).
            ".if 3b - 2b - 76",
            ".error \"pair_quad is not 76 bytes\"",
            ".endif",
            pair_quad!(),
            pair_quad!(),
            pair_quad!(),
            "5:",
            ".if 5b - 2b - 304",
            ".error \"the pair loop is not 4 quads\"",
            ".endif",
            "ldr r0, [sp, #16]",
            "cmp r6, r0",
            "bne 2b",
            "ldr r0, [sp]",
            "stm r0!, {{r4, r5, r8, r9}}",
            "str r0, [sp]",
            "ldr r1, [sp, #4]",
            "stm r1!, {{r10, r11, r12, lr}}",
            "str r1, [sp, #4]",
            "ldr r2, [sp, #8]",
            "cmp r0, r2",
            "bne 4b",
            "add sp, sp, #24",
            "pop {{r6, r7}}",
            inout("r0") patch => _,
            inout("r1") weights => _,
            inout("r2") quads => _,
            inout("r3") sums => _,
            inout("r4") rounds => _,
            out("r5") _,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
            out("r12") _,
            out("lr") _,
        )
    }
}

/// The int8 quads of two pixels (`a`, `b`) widened with `offset` added into one interleaved
/// patch for [`pair_rounds`]: per quad two LDR (which may be unaligned), four SXTAB16 and one
/// STM of A's even, B's even, A's odd and B's odd halfword pairs.
///
/// # Safety
/// `a` and `b` hold `4 quads` readable bytes, `dst` `4 quads` writable words (word-aligned);
/// `quads` is at least 1.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[inline(never)]
unsafe fn widen_pair(a: *const i8, b: *const i8, dst: *mut u32, quads: usize, offset: u32) {
    // SAFETY: the caller's guarantees.
    unsafe {
        core::arch::asm!(
            "2:",
            "ldr r12, [r0], #4",
            "ldr lr, [r1], #4",
            "sxtab16 r4, r3, r12",
            "sxtab16 r5, r3, lr",
            "sxtab16 r12, r3, r12, ror #8",
            "sxtab16 lr, r3, lr, ror #8",
            "stm r2!, {{r4, r5, r12, lr}}",
            "subs r8, r8, #1",
            "bne 2b",
            inout("r0") a => _,
            inout("r1") b => _,
            inout("r2") dst => _,
            in("r3") offset,
            inout("r8") quads => _,
            out("r4") _,
            out("r5") _,
            out("r12") _,
            out("lr") _,
            options(nostack),
        );
    }
}

/// A conv with [`WeightLayout::Oc4SplitI16`] weights (see [`pairs_supported`]), on the M4 two
/// pixels at a time: both pixels' patches are built before either's outputs are written (the
/// order [`Io::Shared`] needs; by [`widen_pair`]: a pointwise conv's straight from its inputs,
/// a window's inside the input row by row where its rows are whole quads, any other's from
/// both pixels' int8 taps gathered by [`raw_patch`]), then up to `CHANNEL_GROUPS` groups
/// a call of [`pair_rounds`] and of [`prepared_pairs`] per pixel. An odd last pixel runs as
/// both pixels of its pair (its outputs written twice, the same bytes).
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[inline(never)]
fn conv_pairs(p: &Conv2d, io: &mut Io, weights: &[u32], rq: &Requantizer, scratch: &mut [u8]) -> Result<(), Error> {
    let (ic, oc, pixels) = (p.input.c as usize, p.output.c as usize, p.output.h as usize * p.output.w as usize);
    let (quads, rounds) = (p.layout.stored_taps(p.kernel_h as usize * p.kernel_w as usize * ic) / 4, oc.div_ceil(4));
    let window = Window::new(p, is_pointwise(p));
    let kh = p.kernel_h as usize;
    let rows_in_quads = window.row > 0 && window.row.is_multiple_of(4) && kh * window.row == 4 * quads;
    let patch = all_scratch_words(scratch);
    check_pairs(quads, rounds, if window.pointwise { 4 * quads } else { 6 * quads }, patch.len(), weights.len())?;
    let (pair, raws) = patch.split_at_mut_checked(4 * quads).ok_or(Error::BufferSize { expected: 4 * quads, found: 0 })?;
    // Each pixel's raw int8 taps, quads words.
    let (one, other) = raws.split_at_mut_checked(raws.len().min(quads)).unwrap_or((&mut [], &mut []));
    let run = rq.pairs_run(oc).ok_or(Error::BadParameter { layer: 0, what: "split i16 weights without a paired requantization" })?;
    let in_len = io.input().len();
    let (input, output) = io.pointers().ok_or(Error::BadParameter { layer: 0, what: "input or output outside its buffer" })?;
    // Written by pair_rounds before prepared_pairs reads it.
    let mut acc = core::mem::MaybeUninit::<[[i32; 4]; 2 * CHANNEL_GROUPS]>::uninit();
    let sums = acc.as_mut_ptr() as *mut [i32; 4];
    let mut k = 0;
    while k < pixels {
        let (qa, qb) = (io.pixel(k, pixels), io.pixel((k + 1).min(pixels - 1), pixels));
        if window.pointwise {
            // SAFETY: pixels qa and qb (< pixels) have ic input bytes each (check_conv), the
            // patch 4 quads words (check_pairs).
            unsafe { widen_pair(input.add(qa * ic), input.add(qb * ic), pair.as_mut_ptr(), quads, window.offset) };
        } else if let Some((sa, sb)) = rows_in_quads.then(|| window.inside(qa).zip(window.inside(qb))).flatten() {
            // Both windows inside the input: each window row of both pixels by one call.
            for ky in 0..kh {
                // SAFETY: row ky of both windows (row bytes from start + ky pitch, inside the
                // input: Window::inside, check_conv) widens to pair words ky row.. (ky + 1) row
                // <= 4 quads (stored taps = kh row, rows in quads); row / 4 >= 1.
                unsafe { widen_pair(input.add(sa + ky * window.pitch), input.add(sb + ky * window.pitch), pair.as_mut_ptr().add(ky * window.row), window.row / 4, window.offset) };
            }
        } else {
            // SAFETY: the input's in_len bytes are only read, and nothing is written while the
            // patches are built from them.
            let x = unsafe { core::slice::from_raw_parts(input, in_len) };
            let ow = (p.output.w as usize).max(1);
            let built = raw_patch(&window, x, qa / ow, qa % ow, one) && raw_patch(&window, x, qb / ow, qb % ow, other);
            if !built || other.len() < quads {
                return Err(Error::BadParameter { layer: 0, what: "conv input shorter than its shape" });
            }
            // SAFETY: both raw patches hold quads words (checked), the pair 4 quads (check_pairs);
            // quads is at least 1.
            unsafe { widen_pair(one.as_ptr() as *const i8, other.as_ptr() as *const i8, pair.as_mut_ptr(), quads, window.offset) };
        }
        let mut group = 0;
        while group < rounds {
            let n = (rounds - group).min(CHANNEL_GROUPS);
            let first = 4 * group;
            let part = run.from(first, (4 * n).min(oc - first));
            // SAFETY: groups group..group + n have 8 quads words each and `acc` holds 2 n
            // groups (check_pairs, CHANNEL_GROUPS); the requantization is prepared for
            // first + 2 part.pairs <= oc channels (pairs_run: oc even), and output pixels qa
            // and qb have oc bytes each (the caller's checks).
            unsafe {
                pair_rounds(pair.as_ptr(), weights.as_ptr().add(8 * quads * group), quads, sums, n);
                prepared_pairs(sums as *const i32, output.add(qa * oc + first), &part);
                prepared_pairs(sums.add(n) as *const i32, output.add(qb * oc + first), &part);
            }
            group += n;
        }
        k += 2;
    }
    Ok(())
}

/// Portable [`conv_pairs`]: the same outputs, a pixel at a time.
#[cfg(not(all(target_arch = "arm", feature = "dsp")))]
fn conv_pairs(p: &Conv2d, io: &mut Io, weights: &[u32], rq: &Requantizer, scratch: &mut [u8]) -> Result<(), Error> {
    let (oc, pixels) = (p.output.c as usize, p.output.h as usize * p.output.w as usize);
    let (quads, rounds) = (p.layout.stored_taps(p.kernel_h as usize * p.kernel_w as usize * p.input.c as usize) / 4, oc.div_ceil(4));
    let window = Window::new(p, is_pointwise(p));
    let patch = all_scratch_words(scratch);
    check_pairs(quads, rounds, if window.pointwise { 4 * quads } else { 6 * quads }, patch.len(), weights.len())?;
    let patch = &mut patch[..2 * quads];
    let mut acc = [[0i32; 4]; CHANNEL_GROUPS];
    for k in 0..pixels {
        let q = io.pixel(k, pixels);
        pixel_patch(&window, io.input(), q, patch);
        for first_group in (0..rounds).step_by(CHANNEL_GROUPS) {
            let n = (rounds - first_group).min(CHANNEL_GROUPS);
            for (g, a) in acc.iter_mut().take(n).enumerate() {
                let at = 8 * quads * (first_group + g);
                *a = dot_oc4_split(patch, weights.get(at..at + 8 * quads).unwrap_or(&[]));
            }
            let first = 4 * first_group;
            let len = (4 * n).min(oc - first);
            rq.channels(acc.as_flattened(), first, io.output(q * oc + first, len));
        }
    }
    Ok(())
}

/// Four channels' sums of one patch with a group's [`WeightLayout::Oc4SplitI16`] weights.
#[cfg(not(all(target_arch = "arm", feature = "dsp")))]
fn dot_oc4_split(patch: &[u32], weights: &[u32]) -> [i32; 4] {
    let mut a = [0i32; 4];
    for (p, w) in patch.chunks_exact(2).zip(weights.chunks_exact(8)) {
        for (c, a) in a.iter_mut().enumerate() {
            *a = smlad(p[1], w[4 + c], smlad(p[0], w[c], *a));
        }
    }
    a
}

/// The patch scratch (`patch_words`, of `need`) and the weights (`weight_words`, for `rounds`
/// groups of `quads` quads) that [`conv_pairs`] reads.
fn check_pairs(quads: usize, rounds: usize, need: usize, patch_words: usize, weight_words: usize) -> Result<(), Error> {
    if patch_words < need {
        return Err(Error::BufferSize { expected: 4 * need, found: 4 * patch_words });
    }
    if quads == 0 || weight_words < 8 * quads * rounds {
        return Err(Error::BadParameter { layer: 0, what: "split i16 weights do not cover the conv" });
    }
    Ok(())
}

/// Portable [`dot_rounds_i16`]: the same sums.
#[cfg(not(all(target_arch = "arm", feature = "dsp")))]
fn dot_rounds_i16<const ADVANCE: bool>(patch: &[u32], weights: &[u32], quads: usize, acc: &mut [[i32; 4]]) {
    for (r, (a, w)) in acc.iter_mut().zip(weights.chunks_exact((8 * quads).max(1))).enumerate() {
        let start = if ADVANCE { 2 * quads * r } else { 0 };
        *a = dot_oc4_i16_body(patch.get(start..start + 2 * quads).unwrap_or(&[]), w);
    }
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
// Where a kernel reads and writes: two buffers, or one that the output overlaps

/// A step's input and output: apart, or one span of the arena in which the output overlaps the
/// input ("in place"): the plan then places the output so that every byte an output pixel writes
/// is no longer needed, given that the kernel finishes reading each pixel's inputs before it
/// writes that pixel's outputs, in pixel order.
pub enum Io<'a> {
    Apart { input: &'a [i8], output: &'a mut [i8] },
    /// `reverse`: the kernel runs its pixels from the last to the first (the output then lies
    /// at or after the input; forward, at or before it).
    Shared { io: &'a mut [i8], input: core::ops::Range<usize>, output: core::ops::Range<usize>, reverse: bool },
}

impl Io<'_> {
    /// The `k`-th output pixel to compute out of `n`.
    #[inline(always)]
    fn pixel(&self, k: usize, n: usize) -> usize {
        match self {
            Io::Shared { reverse: true, .. } => n - 1 - k,
            _ => k,
        }
    }

    #[inline(never)]
    fn input(&self) -> &[i8] {
        match self {
            Io::Apart { input, .. } => input,
            Io::Shared { io, input, .. } => io.get(input.clone()).unwrap_or(&[]),
        }
    }

    /// The input's and the output's first bytes, both from the one borrow (for kernels that
    /// read and write in one asm loop); None if a shared range leaves the buffer.
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    fn pointers(&mut self) -> Option<(*const i8, *mut i8)> {
        match self {
            Io::Apart { input, output } => Some((input.as_ptr(), output.as_mut_ptr())),
            Io::Shared { io, input, output, .. } => {
                let fits = input.start <= input.end && input.end <= io.len() && output.start <= output.end && output.end <= io.len();
                let base = io.as_mut_ptr();
                fits.then(|| (base.wrapping_add(input.start) as *const i8, base.wrapping_add(output.start)))
            }
        }
    }

    fn output_len(&self) -> usize {
        match self {
            Io::Apart { output, .. } => output.len(),
            Io::Shared { output, .. } => output.len(),
        }
    }

    /// Output bytes `at..at + len` (empty when out of range).
    fn output(&mut self, at: usize, len: usize) -> &mut [i8] {
        match self {
            Io::Apart { output, .. } => output.get_mut(at..at + len).unwrap_or(&mut []),
            Io::Shared { io, output, .. } => io.get_mut(output.start + at..output.start + at + len).filter(|_| at + len <= output.len()).unwrap_or(&mut []),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requantization with SMMULR

/// The worst-case magnitude of a channel's accumulator plus bias: `taps x 128 x 255 + |bias|`.
fn accumulator_bound(bias: i64, taps: usize) -> i64 {
    (taps as i64) * 128 * 255 + bias.abs()
}

/// Which fast requantization is exact for a layer, if any.
///
/// `Right`: every shift a right shift (-31..=-1) and every accumulator below 2^30, so that
/// `2 acc` fits in int32. Then TFLM's `RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc, m), r)`
/// is exactly `(SMMULR(2 acc, m) + 2^(r-1) + (t < 0 ? -1 : 0)) >> r`: `SMMULR(2a, m)` rounds
/// `(2am + 2^31) / 2^32 = (am + 2^30) / 2^31`, and adding `2^(r-1) - [t < 0]` before the
/// arithmetic shift rounds half away from zero.
///
/// `Any`: shifts in -31..=30, and each channel's accumulator `v` shifted left by its shift (if
/// positive) below 2^31 - 512, or below 2^30 - 256 for a channel without right shift: see
/// [`requant_smmulr_any`]. A channel with multiplier 0 needs no bound (its product is 0 whatever
/// `v` is, wrapped or not): the VWW MobileNet has such dead channels, with biases near 2^30.
///
/// `Wide`: `Any`, with a right shift on every live channel (multiplier not 0): `acc + bias`
/// fits in int32 but `2 (acc + bias)` may not (the VWW MobileNet's live channels with biases
/// near ±2^30 and shifts of -26 to -31), so [`requant_n`]'s paired loop takes the product in 64
/// bits (SMULL) and rounds it to its bits 31..62; a dead channel's product is 0 whatever its
/// shift, and so is what the rounding shift makes of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fast {
    Right,
    Wide,
    Any,
}

/// `r`'s fast form for a kernel of `taps` taps an output: the plan's choice, or made now.
fn requant_form(r: &Requant, bias: I32Le, taps: usize) -> Option<Fast> {
    r.planned.unwrap_or_else(|| fast_requant(r, bias, taps))
}

/// Choose `r`'s fast form once, as the engine plans (a scan of every channel that would
/// otherwise run at every call: 6% of AD's autoencoder). `taps` must be what the kernel that
/// runs it passes to [`requant_form`]: a conv's `kh kw ic`, a depthwise conv's `kh kw`.
pub(crate) fn plan_requant(r: &mut Requant, bias: I32Le, taps: usize) {
    r.planned = Some(fast_requant(r, bias, taps));
}

#[inline(never)]
fn fast_requant(r: &Requant, bias: I32Le, taps: usize) -> Option<Fast> {
    // The common case first, in one cheap pass per section (this runs once per layer when the
    // engine plans, at every call of a kernel run without a plan).
    let max_bias = bias.iter().map(i32::unsigned_abs).max().unwrap_or(0);
    if r.shifts.iter().all(|s| (-31..=-1).contains(&s)) && accumulator_bound(max_bias as i64, taps) < 1 << 30 {
        return Some(Fast::Right);
    }
    let mut fast = Fast::Wide;
    for ((s, b), m) in r.shifts.iter().zip(bias.iter()).zip(r.multipliers.iter()) {
        let limit = if s < 0 { (1i64 << 31) - 512 } else { (1i64 << 30) - 256 };
        if !(-31..=30).contains(&s) || (m != 0 && accumulator_bound(b as i64, taps) >= limit >> s.max(0)) {
            return None;
        }
        if m != 0 && s >= 0 {
            fast = Fast::Any;
        }
    }
    Some(fast)
}

/// Whether every channel's zero point can be folded into its rounding ([`folded_zero_point`]):
/// no multiplier is negative, and every live channel shifts right by at most 22.
fn zero_point_folds(r: &Requant) -> bool {
    r.multipliers.iter().zip(r.shifts.iter()).all(|(m, s)| m == 0 || (m > 0 && s >= -22))
}

/// A channel's requantization constants with its zero point folded in: `(k, s)` with
/// `s = r - 1` (`r = -shift`; 0 for a dead channel) and `k = (2 zp + 1) << s`: for
/// `a = 2 (acc + bias)` under [`Fast::Right`], [`requant_n`]'s `sat8((((x' >> s) + 2 zp + 1) >> 1)`
/// is `sat8((SMMLAR(a, m, k + (a >> 31)) >> s) >> 1)`, one instruction a channel less.
///
/// Why it is exact: `k` is a multiple of `2^s`, so `(x' + k) >> s = (x' >> s) + 2 zp + 1`,
/// [`requant_n`]'s halving form; and its `x' = x - [x < 0]` (`x = SMMULR(a, m)`) may take the
/// sign of `a` instead of `x`: with `m >= 0` they differ only where `x = 0 > a`, and there
/// `(-1 >> s) + 2 zp + 1 = 2 zp` and `2 zp + 1` both halve to `zp`. A dead channel (`m = 0`)
/// has `x = 0` whatever `a` is: shift 0 gives it `zp` too. With `s <= 21`, `|k| < 2^29`, and
/// `|x| <= 2^30`, nothing overflows.
fn folded_zero_point(m: i32, shift: i32, zp: i32) -> (u32, u32) {
    let s = if m == 0 { 0 } else { !shift & 31 };
    (zp.wrapping_mul(2).wrapping_add(1).wrapping_shl(s as u32) as u32, s as u32)
}

/// TFLM's requantization of `acc` for a channel with multiplier `m` and right shift `-shift`
/// (see [`Fast::Right`] for when it is exact).
#[inline(always)]
fn requant_smmulr(acc: i32, m: i32, shift: i32, zp: i32, lo: i32, hi: i32) -> i8 {
    let right = shift.wrapping_neg() as u32 & 31;
    let nudge = ((1u32 << right) >> 1) as i32;
    let x = smmulr(acc << 1, m);
    let v = (x + nudge + (x >> 31)) >> right;
    (v + zp).bounded(lo, hi) as i8
}

/// TFLM's requantization of `acc` for a channel with multiplier `m` and any shift, where
/// [`Fast::Any`] holds. `v = acc << max(shift, 0)` does not overflow, and
/// `x = SaturatingRoundingDoublingHighMul(v, m) = floor((v m + 2^30) / 2^31)` is computed from the
/// 64-bit product (SMULL) and has `|x| <= |v|`. With `r = -shift >= 1`, the rounding shift is
/// [`requant_n`]'s halving form `((x' >> (r - 1)) + 2 zp + 1) >> 1` (`x' = x - [x < 0]`); with no
/// right shift TFLM adds the zero point to `x`, which is `(2x + 2 zp + 1) >> 1`.
#[inline(always)]
#[cfg_attr(all(target_arch = "arm", feature = "dsp"), allow(dead_code))] // the M4 runs its asm form (requant_body)
fn requant_smmulr_any(acc: i32, m: i32, shift: i32, zp: i32, lo: i32, hi: i32) -> i8 {
    let v = acc << shift.bounded(0, 30);
    let x = ((v as i64 * m as i64 + (1 << 30)) >> 31) as i32;
    let y = if shift < 0 { (x + (x >> 31)) >> (!shift & 31) } else { x << 1 };
    ((y + 2 * zp + 1) >> 1).bounded(lo, hi) as i8
}

/// The fast requantization where it is exact, TFLM's general one elsewhere.
struct Requantizer<'r> {
    requant: &'r Requant<'r>,
    bias: I32Le<'r>,
    fast: Option<Fast>,
    /// The channels every section holds (what [`requant_n`] may read).
    sections: usize,
    /// Empty, or per pair of channels their `2 bias` (`bias` for [`Fast::Wide`]) and their
    /// `!shift`s, four words (see [`Requantizer::prepared`]).
    prep: &'r [u32],
}

/// Words of a prepared requantization (see [`Requantizer::prepared`]), and bytes of scratch
/// for it (with the slack to align it).
fn prep_words(channels: usize) -> usize {
    4 * channels.div_ceil(2)
}

fn prep_scratch_bytes(channels: usize) -> usize {
    4 * prep_words(channels) + 3
}

impl<'r> Requantizer<'r> {
    fn new(requant: &'r Requant<'r>, bias: I32Le<'r>, taps: usize) -> Self {
        let sections = bias.len().min(requant.multipliers.len()).min(requant.shifts.len());
        Requantizer { requant, bias, fast: requant_form(requant, bias, taps), sections, prep: &[] }
    }

    /// [`Requantizer::new`] for a kernel with many pixels: where the paired loop of
    /// [`requant_n`] runs (Right or Wide, full int8 clamp), each pair of channels' `2 bias`
    /// (Wide: `bias`) and `!shift`s are laid out once in `scratch` (the front
    /// [`prep_scratch_bytes`] of it), interleaved for one LDM a pair, which saves that loop
    /// five instructions a pair, if `keep` bytes are left for the kernel. Returns the scratch
    /// left.
    fn prepared(requant: &'r Requant<'r>, bias: I32Le<'r>, taps: usize, scratch: &'r mut [u8], keep: usize) -> (Self, &'r mut [u8]) {
        let mut rq = Requantizer::new(requant, bias, taps);
        let n = rq.sections;
        if scratch.len() < prep_scratch_bytes(n).saturating_add(keep) {
            return (rq, scratch);
        }
        let at = prep_scratch_bytes(n).min(scratch.len());
        let (front, rest) = scratch.split_at_mut(at);
        let pairs = matches!(rq.fast, Some(Fast::Right | Fast::Wide)) && (requant.act_min, requant.act_max) == (i8::MIN, i8::MAX);
        // Right's loop doubles the accumulator and adds 2 bias; Wide's adds the bias.
        let factor = if rq.fast == Some(Fast::Wide) { 1 } else { 2 };
        if let (true, Ok(prep)) = (pairs, scratch_words(front, prep_words(n))) {
            for (j, words) in prep.chunks_exact_mut(4).enumerate() {
                for i in 0..2 {
                    words[i] = bias.get(2 * j + i).wrapping_mul(factor) as u32;
                    words[2 + i] = !requant.shifts.get(2 * j + i) as u32;
                }
            }
            rq.prep = prep;
        }
        (rq, rest)
    }

    /// Channels `0..n` by [`prepared_pairs`], where a prepared requantization serves them all
    /// (`n` even and at least 2): checked once, for a pixel loop to call it with no more checks.
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    #[inline(always)]
    fn pairs_run(&self, n: usize) -> Option<PairsRun> {
        let ready = n >= 2 && n % 2 == 0 && n <= self.sections && self.prep.len() >= prep_words(self.sections);
        let fast = self.fast.filter(|_| ready)?;
        Some(PairsRun { m: self.requant.multipliers.bytes().as_ptr(), prep: self.prep.as_ptr(), zp: 2 * self.requant.output_zp + 1, pairs: n / 2, wide: fast == Fast::Wide })
    }

    /// One channel, TFLM's general arithmetic (the fast forms run a group or more at a time;
    /// this serves layers without one and sections the fast forms could not slice).
    #[inline(never)]
    fn apply(&self, acc: i32, c: usize) -> i8 {
        self.requant.apply(acc.wrapping_add(self.bias.get(c)), c)
    }

    /// Channels `first..first + out.len()` from their accumulators.
    #[inline(always)]
    fn channels(&self, acc: &[i32], first: usize, out: &mut [i8]) {
        if let Some(fast) = self.fast {
            return requant_n(self, fast, acc, first, out);
        }
        for (j, (o, &a)) in out.iter_mut().zip(acc).enumerate() {
            *o = self.apply(a, first + j);
        }
    }

    /// Four accumulators of channel group `g`.
    #[inline(always)]
    fn group(&self, acc: [i32; 4], g: usize, out: &mut [i8]) {
        if let Some(fast) = self.fast.filter(|_| 4 * g + 4 <= self.sections) {
            if let Some(o) = out.get_mut(4 * g..4 * g + 4) {
                return requant_n(self, fast, &acc, 4 * g, o);
            }
        }
        for (j, &a) in acc.iter().enumerate() {
            let c = 4 * g + j;
            if let Some(o) = out.get_mut(c) {
                *o = self.apply(a, c);
            }
        }
    }
}

/// [`requant_smmulr`] (`Fast::Right`) or [`requant_smmulr_any`] (`Fast::Any`) of channels
/// `first..first + out.len()` of `rq`: `acc[j] + bias` with the channel's multiplier and shift
/// (nothing is written if `rq`'s sections do not hold them all). Portable.
#[cfg(not(all(target_arch = "arm", feature = "dsp")))]
fn requant_n(rq: &Requantizer, fast: Fast, acc: &[i32], first: usize, out: &mut [i8]) {
    let r = rq.requant;
    let span = 4 * first..4 * (first + out.len());
    let (Some(b), Some(m), Some(s)) = (rq.bias.bytes().get(span.clone()), r.multipliers.bytes().get(span.clone()), r.shifts.bytes().get(span)) else {
        return;
    };
    let (b, m, s) = (b.as_chunks::<4>().0, m.as_chunks::<4>().0, s.as_chunks::<4>().0);
    let (zp, lo, hi) = (r.output_zp, r.act_min, r.act_max);
    let one = match fast {
        Fast::Right => requant_smmulr,
        Fast::Wide | Fast::Any => requant_smmulr_any,
    };
    for ((((o, &a), b), m), s) in out.iter_mut().zip(acc).zip(b).zip(m).zip(s) {
        *o = one(a.wrapping_add(i32::from_le_bytes(*b)), i32::from_le_bytes(*m), i32::from_le_bytes(*s), zp, lo as i32, hi as i32);
    }
}

/// [`requant_smmulr`] (`Fast::Right`) or [`requant_smmulr_any`] (`Fast::Wide`, `Fast::Any`) of
/// the channels of `out`. The rounding shift by `r = -shift` is done as `((x' >> (r - 1)) + 1 + 2 zp) >> 1`
/// with `x' = x - [x < 0]`: `floor((floor(y / 2^(r-1)) + 1) / 2) = floor((y + 2^(r-1)) / 2^r)`
/// for any integer `y`, so this is [`requant_smmulr`]'s `(x + 2^(r-1) - [x < 0]) >> r` plus the
/// zero point (`r - 1` is `!shift`; `2 zp` is even, so adding it before the last halving is
/// exact). `Fast::Right` with the full int8 clamp (TFLM's for ReLU and ReLU6 quantized to their
/// range, and no activation) runs two channels per iteration, 12 instructions a channel (9
/// from a prepared requantization), and so does `Fast::Wide` from a prepared requantization
/// (12 a channel: the product by SMULL); the rest one at a time by [`requant_smmulr_any`]'s
/// loop (exact for right shifts too: 24 instructions a channel, 29 with a clamp).
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[inline(never)]
fn requant_n(rq: &Requantizer, fast: Fast, acc: &[i32], first: usize, out: &mut [i8]) {
    let n = out.len();
    if n == 0 || acc.len() < n || first.saturating_add(n) > rq.sections {
        return;
    }
    let r = rq.requant;
    // A prepared requantization (Right or Wide with the full int8 clamp, see
    // Requantizer::prepared) of whole pairs first, with nothing else to decide.
    if (n | first) % 2 == 0 && rq.prep.len() >= prep_words(rq.sections) {
        // SAFETY: n is even and not 0 (at least a pair); the multipliers hold first + n words,
        // and the prepared requantization 2 (first + n) words (first + n <= sections, checked
        // above); `acc` holds n.
        unsafe {
            let (m, prep) = (r.multipliers.bytes().as_ptr().add(4 * first), rq.prep.as_ptr().add(2 * first));
            let run = PairsRun { m, prep, zp: 2 * r.output_zp + 1, pairs: n / 2, wide: fast == Fast::Wide };
            return prepared_pairs(acc.as_ptr(), out.as_mut_ptr(), &run);
        }
    }
    // SAFETY: each section holds rq.sections >= first + n words (checked above).
    let (b, m, s) = unsafe { (rq.bias.bytes().as_ptr().add(4 * first), r.multipliers.bytes().as_ptr().add(4 * first), r.shifts.bytes().as_ptr().add(4 * first)) };
    // SAFETY: `acc` holds n words, the sections n from their pointers.
    unsafe { requant_body(acc.as_ptr(), [b, m, s], r.output_zp, r.act_min, r.act_max, fast, out) }
}

/// [`prepared_pairs`]'s constants: the multipliers and the prepared words of the first pair,
/// `2 zp + 1`, the pairs, and whether the product is Wide's (SMULL) or Right's (SMMULR).
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[derive(Clone, Copy)]
struct PairsRun {
    m: *const u8,
    prep: *const u32,
    zp: i32,
    pairs: usize,
    wide: bool,
}

#[cfg(all(target_arch = "arm", feature = "dsp"))]
impl PairsRun {
    /// Channels `first..first + n` of a run that starts at channel 0 (`n` even).
    fn from(&self, first: usize, n: usize) -> PairsRun {
        PairsRun { m: self.m.wrapping_add(4 * first), prep: self.prep.wrapping_add(2 * first), pairs: n / 2, ..*self }
    }
}

/// The end of a pair of channels in [`requant_n`]'s paired loops, once `{a}` and `{c}` hold
/// their rounded products: the halving rounding shift by the `!shift`s in `$sa` and `$sc` (see
/// [`requant_n`]), `2 zp + 1` from `{zp}`, the int8 clamp, the two stores through `{po}`.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
macro_rules! requant_pair_end {
    ($sa:literal, $sc:literal) => {
        concat!(
            "add {a}, {a}, {a}, asr #31\n",
            "add {c}, {c}, {c}, asr #31\n",
            "asr {a}, {a}, ", $sa, "\n",
            "asr {c}, {c}, ", $sc, "\n",
            "add {a}, {a}, {zp}\n",
            "add {c}, {c}, {zp}\n",
            "ssat {a}, #8, {a}, asr #1\n",
            "ssat {c}, #8, {c}, asr #1\n",
            "strb {a}, [{po}], #1\n",
            "strb {c}, [{po}], #1\n",
        )
    };
}

/// [`requant_n`] of an even number of channels from a prepared requantization: per pair, one
/// LDM of its four prepared words (`2 bias` or `bias` for `wide`, then `!shift`: explicit
/// ascending registers, loaded in address order), its multipliers by LDRD, the product by
/// SMMULR of the doubled sum (Right) or by SMULL rounded to bits 31..62 (`wide`:
/// `2 hi + bit 31 + bit 30 of lo`, LSLS putting bit 31 in the carry), then
/// [`requant_pair_end`]. `zp` is `2 zp + 1`.
///
/// Out of line, called by [`requant_n`] and, once per pixel without its checks, by the
/// pointwise pixel loop of [`conv2d_s8_fast_io`] (see [`Requantizer::pairs_run`]).
///
/// # Safety
/// `run.pairs` is at least 1; `acc` and `run.m` hold `2 run.pairs` words from their pointers,
/// `run.prep` `4 run.pairs`, and `out` `2 run.pairs` bytes.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[inline(never)]
unsafe fn prepared_pairs(acc: *const i32, out: *mut i8, run: &PairsRun) {
    let PairsRun { m, prep, zp, pairs, wide } = *run;
    // One pair of channels; the loop runs two a pass (an odd count enters the second).
    macro_rules! pair {
        ($scale:literal, $mul:literal) => {
            concat!(
                "ldrd {a}, {c}, [{pa}], #8\n",
                "ldm {pp}!, {{r8, r9, r10, r11}}\n",
                $scale,
                "ldrd r8, r9, [{pm}], #8\n",
                $mul,
                requant_pair_end!("r10", "r11"),
            )
        };
    }
    macro_rules! prepared {
        ($scale:literal, $mul:literal) => {
            core::arch::asm!(
                "lsrs {k}, {k}, #1",
                "bcc 2f",
                "adds {k}, {k}, #1",
                "b 3f",
                "2:",
                pair!($scale, $mul),
                "3:",
                pair!($scale, $mul),
                "subs {k}, {k}, #1",
                "bne 2b",
                pa = inout(reg) acc => _, pp = inout(reg) prep => _, pm = inout(reg) m => _, po = inout(reg) out => _,
                k = inout(reg) pairs => _, zp = in(reg) zp, a = out(reg) _, c = out(reg) _,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                options(nostack),
            )
        };
    }
    // SAFETY: reads 2 pairs words of `acc` and `m` and 4 pairs of `prep`, writes 2 pairs bytes
    // of `out` (the caller's guarantee).
    unsafe {
        if wide {
            prepared!(
                "add {a}, r8, {a}\nadd {c}, r9, {c}\n",
                "smull r8, {a}, {a}, r8\nsmull r9, {c}, {c}, r9\nlsls r8, r8, #1\nadc {a}, {a}, {a}\nlsls r9, r9, #1\nadc {c}, {c}, {c}\nadd {a}, {a}, r8, lsr #31\nadd {c}, {c}, r9, lsr #31\n"
            );
        } else {
            prepared!("add {a}, r8, {a}, lsl #1\nadd {c}, r9, {c}, lsl #1\n", "smmulr {a}, {a}, r8\nsmmulr {c}, {c}, r9\n");
        }
    }
}

/// [`requant_n`]'s loops from the model's sections: Right's pairs (the full int8 clamp), then
/// what they left (an odd channel, a clamp, Wide or Any) one at a time.
///
/// # Safety
/// `out` holds at least one channel, and `acc` and each section at least `out.len()` words.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[inline(always)]
unsafe fn requant_body(acc: *const i32, sections: [*const u8; 3], zp: i32, lo: i8, hi: i8, fast: Fast, out: &mut [i8]) {
    let [pb, pm, ps] = sections;
    let mut n = out.len();
    let zp = 2 * zp + 1;
    let (mut pa, mut pb, mut pm, mut ps, mut po) = (acc, pb, pm, ps, out.as_mut_ptr());
    if fast == Fast::Right && (lo, hi) == (i8::MIN, i8::MAX) && n >= 2 {
        // SAFETY: reads 2 (n / 2) words of `acc` and of each section, writes as many bytes of
        // `out` (the caller's guarantee); the pointers come back past them for the odd channel.
        // Per pair: `2 (acc + bias)` by SMMULR with the multipliers, then the `!shift`s.
        unsafe {
            core::arch::asm!(
                "2:",
                "ldrd {a}, {c}, [{pa}], #8",
                "ldrd {t}, {u}, [{pb}], #8",
                "add {a}, {a}, {t}",
                "add {c}, {c}, {u}",
                "lsl {a}, {a}, #1",
                "lsl {c}, {c}, #1",
                "ldrd {t}, {u}, [{pm}], #8",
                "smmulr {a}, {a}, {t}",
                "smmulr {c}, {c}, {u}",
                "ldrd {t}, {u}, [{ps}], #8",
                "mvn {t}, {t}",
                "mvn {u}, {u}",
                requant_pair_end!("{t}", "{u}"),
                "subs {k}, {k}, #1",
                "bne 2b",
                pa = inout(reg) pa, pb = inout(reg) pb, pm = inout(reg) pm, ps = inout(reg) ps, po = inout(reg) po,
                k = inout(reg) n / 2 => _, zp = in(reg) zp, a = out(reg) _, c = out(reg) _, t = out(reg) _, u = out(reg) _,
                options(nostack),
            );
        }
        if n % 2 == 0 {
            return;
        }
        n = 1;
    }
    // acc + bias, scaled for any shift (see requant_smmulr_any): the left shift, the 64-bit product
    // rounded to its bits 31..62 (`2 hi + ((lo >> 1) + 2^29) >> 30`), then `x' >> (r - 1)` or `2x`.
    // The flags of `cmp` live to the `ittte` (nothing between sets them).
    macro_rules! any_scale { () => { concat!(
        "ldr {t}, [{ps}], #4\n",
        "cmp {t}, #0\n",
        "it gt\n",
        "lslgt {a}, {a}, {t}\n",
        "ldr {t}, [{pm}], #4\n",
        "smull {t}, {a}, {a}, {t}\n",
        "lsr {t}, {t}, #1\n",
        "add {t}, {t}, #0x20000000\n",
        "lsl {a}, {a}, #1\n",
        "add {a}, {a}, {t}, lsr #30\n",
        "ldr {t}, [{ps}, #-4]\n",
        "ittte lt\n",
        "addlt {a}, {a}, {a}, asr #31\n",
        "mvnlt {t}, {t}\n",
        "asrlt {a}, {a}, {t}\n",
        "lslge {a}, {a}, #1\n",
    ) } }
    // `$clamp` halves `a` (the last step of the rounding shift) and clamps it.
    macro_rules! channel {
        ($scale:ident, $clamp:literal) => {
            concat!(
                "2:\n",
                "ldr {a}, [{pa}], #4\n",
                "ldr {t}, [{pb}], #4\n",
                "add {a}, {a}, {t}\n",
                $scale!(),
                "add {a}, {a}, {zp}\n",
                $clamp,
                "strb {a}, [{po}], #1\n",
                "subs {k}, {k}, #1\n",
                "bne 2b\n",
            )
        };
    }
    macro_rules! run {
        ($scale:ident, full) => {
            core::arch::asm!(
                channel!($scale, "ssat {a}, #8, {a}, asr #1\n"),
                pa = inout(reg) pa => _, pb = inout(reg) pb => _, pm = inout(reg) pm => _,
                ps = inout(reg) ps => _, po = inout(reg) po => _, k = inout(reg) n => _,
                zp = in(reg) zp, a = out(reg) _, t = out(reg) _,
                options(nostack),
            )
        };
        ($scale:ident, partial) => {
            core::arch::asm!(
                channel!($scale, "asr {a}, {a}, #1\ncmp {a}, {lo}\nit lt\nmovlt {a}, {lo}\ncmp {a}, {hi}\nit gt\nmovgt {a}, {hi}\n"),
                pa = inout(reg) pa => _, pb = inout(reg) pb => _, pm = inout(reg) pm => _,
                ps = inout(reg) ps => _, po = inout(reg) po => _, k = inout(reg) n => _,
                zp = in(reg) zp, lo = in(reg) lo as i32, hi = in(reg) hi as i32, a = out(reg) _, t = out(reg) _,
                options(nostack),
            )
        };
    }
    // SAFETY: reads n words of `acc` and the three sections from the pointers on (the caller's
    // guarantee, less what the pairs took; the sections are 4-byte aligned in the model) and
    // writes n bytes of `out`.
    unsafe {
        // Right shifts are a case of any shift (the Any bounds hold where Right's do); what the
        // pairs left (an odd channel, or a clamp) runs the Any loops.
        if (lo, hi) == (i8::MIN, i8::MAX) {
            run!(any_scale, full)
        } else {
            run!(any_scale, partial)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Convolution with OC4 weights: any kernel, stride and padding

/// Words per group of 4 channels for `taps` taps in an OC4 layout.
fn group_words(layout: WeightLayout, taps: usize) -> usize {
    let taps = layout.stored_taps(taps);
    match layout {
        WeightLayout::Oc4PairsI16 => 2 * taps,
        WeightLayout::Oc4Int4 => taps / 2,
        _ => taps,
    }
}

/// Weights in an OC4 layout, word-aligned.
pub fn conv2d_s8_fast_supported(p: &Conv2d) -> bool {
    (p.layout.is_oc4() || pairs_supported(p)) && words(p.weights).is_some()
}

pub fn conv2d_s8_fast_scratch_bytes(p: &Conv2d) -> usize {
    let taps = p.layout.stored_taps(p.kernel_h as usize * p.kernel_w as usize * p.input.c as usize);
    let pixels = p.output.h as usize * p.output.w as usize;
    let blocked = match p.layout {
        WeightLayout::Oc4Quads => blocked_scratch_bytes(patch_words(taps), pixels, taps, 2),
        WeightLayout::Oc4Int4 => blocked_scratch_bytes(patch_words(taps), pixels, taps, 1),
        _ => None,
    };
    // Split i16: the interleaved patch of two pixels, and (not pointwise) each one's own.
    let patches = match p.layout {
        WeightLayout::Oc4SplitI16 if is_pointwise(p) => 2,
        WeightLayout::Oc4SplitI16 => 3,
        _ => 1,
    };
    prep_scratch_bytes(p.output.c as usize) + blocked.unwrap_or(4 * patches * patch_words(taps) + 3)
}

/// VALID convolutions whose kernel rows are whole quads of input bytes: the fused kernels' patches.
fn conv_rows_in_quads(p: &Conv2d) -> bool {
    p.padding == Padding::Valid && p.layout.is_oc4() && conv2d_s8_fast_supported(p) && (p.kernel_w as usize * p.input.c as usize).is_multiple_of(4)
}

/// Build the widened patch of output pixel `(oy, ox)` of a VALID conv whose kernel rows are
/// whole quads ([`conv_rows_in_quads`]).
#[inline(always)]
fn conv_patch(p: &Conv2d, input: &[i8], oy: usize, ox: usize, input_offset: u32, patch: &mut [u32]) {
    let (iw, ic) = (p.input.w as usize, p.input.c as usize);
    let (kh, kw) = (p.kernel_h as usize, p.kernel_w as usize);
    let row = kw * ic;
    for ky in 0..kh {
        let iy = oy * p.stride_h as usize + ky;
        let start = (iy * iw + ox * p.stride_w as usize) * ic;
        widen(sub(input, start, row), input_offset, sub_mut(patch, ky * row / 2, row / 2));
    }
}

/// What the patch of any pixel of a conv needs, worked out once per call (the narrow layers
/// of the MLPerf Tiny models build thousands of small patches, where recomputing the padding
/// and the window's bounds cost more than copying the taps).
struct Window<'a> {
    p: &'a Conv2d<'a>,
    top: usize,
    left: usize,
    /// The input's zero point in every byte (a padding tap, before widening).
    zp: u32,
    /// `-zp` in both halfwords (see [`widen_quad`]).
    offset: u32,
    pointwise: bool,
    /// Bytes of a window row (`kw ic`) and of an input row (`iw ic`).
    row: usize,
    pitch: usize,
}

impl<'a> Window<'a> {
    fn new(p: &'a Conv2d<'a>, pointwise: bool) -> Self {
        Window {
            p,
            top: p.padding.leading(p.input.h as usize, p.kernel_h as usize, p.stride_h as usize, p.output.h as usize),
            left: p.padding.leading(p.input.w as usize, p.kernel_w as usize, p.stride_w as usize, p.output.w as usize),
            zp: u32::from_ne_bytes([p.input_zp as u8; 4]),
            offset: offset_pair(p.input_zp),
            pointwise,
            row: p.kernel_w as usize * p.input.c as usize,
            pitch: p.input.w as usize * p.input.c as usize,
        }
    }
}

impl Window<'_> {
    /// The input row and column of output pixel `(oy, ox)`'s first tap (negative in the
    /// padding), and whether all of its window lies inside the input.
    #[inline(always)]
    fn origin(&self, oy: usize, ox: usize) -> (isize, isize, bool) {
        let p = self.p;
        let (y0, x0) = ((oy * p.stride_h as usize) as isize - self.top as isize, (ox * p.stride_w as usize) as isize - self.left as isize);
        let inside = y0 >= 0 && x0 >= 0 && y0 as usize + p.kernel_h as usize <= p.input.h as usize && x0 as usize + p.kernel_w as usize <= p.input.w as usize;
        (y0, x0, inside)
    }

    /// Where output pixel `q`'s window starts in the input, if all of it lies inside.
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    fn inside(&self, q: usize) -> Option<usize> {
        let ow = (self.p.output.w as usize).max(1);
        let (y0, x0, inside) = self.origin(q / ow, q % ow);
        inside.then(|| y0 as usize * self.pitch + x0 as usize * self.p.input.c as usize)
    }
}

/// The widened patch of output pixel `(oy, ox)` of any conv: taps in OHWI order, the input
/// minus its zero point, 0 where the window leaves the input (TFLite skips those taps: the same
/// sum), zeros up to the stored taps.
fn conv_patch_padded(w: &Window, input: &[i8], oy: usize, ox: usize, patch: &mut [u32]) {
    let (kh, ic) = (w.p.kernel_h as usize, w.p.input.c as usize);
    let (y0, x0, inside) = w.origin(oy, ox);
    let (row, pitch) = (w.row, w.pitch);
    if inside {
        let start = y0 as usize * pitch + x0 as usize * ic;
        if row.is_multiple_of(4) {
            // On the M4 the rows by the leaf loop; a window past the input (only an input
            // shorter than its shape, which the kernels check first) or an empty row gives a
            // zero patch.
            #[cfg(all(target_arch = "arm", feature = "dsp"))]
            if row == 0 || start + kh.saturating_sub(1) * pitch + row > input.len() || kh * row / 2 > patch.len() {
                fill_words(patch, 0);
                return;
            }
            for ky in 0..kh {
                #[cfg(all(target_arch = "arm", feature = "dsp"))]
                // SAFETY: row ky's bytes start + ky pitch.. + row lie in the input and its
                // row / 2 words ky row / 2.. in the patch (both checked above); row is a
                // nonzero multiple of 4.
                unsafe { widen_pixel(input.as_ptr().add(start + ky * pitch), patch.as_mut_ptr().add(ky * row / 2), row / 4, w.offset) };
                #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
                widen(sub(input, start + ky * pitch, row), w.offset, sub_mut(patch, ky * row / 2, row / 2));
            }
            fill_words(patch.get_mut(kh * row / 2..).unwrap_or(&mut []), 0);
            return;
        }
    }
    // The raw int8 taps go to the patch's second half, then widen forward in place: quad q is
    // read from word half + q before words 2q and 2q + 1 are written, and 2q + 1 <= half + q for
    // every quad (the patch has an even number of words: stored taps are a multiple of 4).
    let half = patch.len() / 2;
    if !patch.get_mut(half..).is_some_and(|raw| raw_patch(w, input, oy, ox, raw)) {
        fill_words(patch, 0);
        return;
    }
    widen_raw(patch, w.offset)
}

/// The int8 taps of output pixel `(oy, ox)` of any conv into `raw` (4 bytes a word, taps in
/// OHWI order), the input's zero point for the taps where the window leaves the input and up
/// to the end of `raw`. False (nothing written) where the input is shorter than its shape or
/// `raw` than the window.
fn raw_patch(w: &Window, input: &[i8], oy: usize, ox: usize, raw: &mut [u32]) -> bool {
    let p = w.p;
    let (ih, iw, ic) = (p.input.h as usize, p.input.w as usize, p.input.c as usize);
    let (kh, kw) = (p.kernel_h as usize, p.kernel_w as usize);
    let (y0, x0, inside) = w.origin(oy, ox);
    let (row, pitch) = (w.row, w.pitch);
    if input.len() < ih * pitch || 4 * raw.len() < kh * row {
        return false;
    }
    // A window inside the input covers its rows' bytes: the zero point only past them.
    // (Inline, not `fill_words`: a call per patch costs VWW 33 K cycles.)
    for word in raw.get_mut(if inside { kh * row / 4 } else { 0 }..).unwrap_or(&mut []) {
        *word = w.zp;
    }
    // The window's in-bounds taps: rows top..bottom, columns first..last of it (all of them
    // inside the input, worked out without the clamps).
    let (top, first, last, bottom) = if inside {
        (0, 0, kw, kh)
    } else {
        let first = (-x0).max(0).min(kw as isize) as usize;
        let top = (-y0).max(0).min(kh as isize) as usize;
        (top, first, (iw as isize - x0).min(kw as isize).max(first as isize) as usize, (ih as isize - y0).min(kh as isize).max(top as isize) as usize)
    };
    let start = (y0 + top as isize) as usize * pitch + (x0 + first as isize) as usize * ic;
    // SAFETY: window row ky's in-bounds taps go to bytes ky row + first ic.. + (last - first) ic
    // <= (ky + 1) row <= kh row of `raw` (4 len bytes, checked above), the rows apart; they are
    // read from input pixels x0 + first.. x0 + last <= iw of row y0 + ky, which lies in 0..ih
    // for top <= ky < bottom, inside the input's ih x iw x ic bytes (checked above). A window
    // with no in-bounds tap (only a shape larger than its padding allows) has `start` past the
    // input: wrapping_add forms that pointer without dereferencing it (no rows or no bytes are
    // copied).
    unsafe { copy_rows((raw.as_mut_ptr() as *mut u8).wrapping_add(top * row + first * ic), input.as_ptr().wrapping_add(start), (last - first) * ic, (pitch, row), bottom - top) }
    true
}

/// The patch's raw int8 taps (its second half) widened forward in place over the whole patch.
#[inline(never)]
fn widen_raw(patch: &mut [u32], offset: u32) {
    let half = patch.len() / 2;
    let (mut to, mut from) = (patch.as_mut_ptr(), patch.as_mut_ptr().wrapping_add(half) as *const u32);
    for _ in 0..half {
        // SAFETY: with half = len / 2, quad q is read from word half + q < len and written to
        // words 2q and 2q + 1 < len; quad q is read before those are written, which hold quads
        // already read (2q + 1 <= half + q).
        unsafe {
            let (lo, hi) = widen_quad(*from, offset);
            (to as *mut [u32; 2]).write([lo, hi]);
            from = from.add(1);
            to = to.add(2);
        }
    }
}

/// A 1x1, stride-1 conv whose pixels are whole quads: its patch is the input pixel, widened.
fn is_pointwise(p: &Conv2d) -> bool {
    p.kernel_h == 1 && p.kernel_w == 1 && p.stride_h == 1 && p.stride_w == 1 && p.input.h == p.output.h && p.input.w == p.output.w && p.input.c.is_multiple_of(4)
}

/// A conv with [`WeightLayout::Oc4SplitI16`] weights that [`conv_pairs`] runs: one whose
/// requantization [`prepared_pairs`] does for all its channels ([`conv_pairs`] has no other;
/// the reference kernel runs split weights without it).
fn pairs_supported(p: &Conv2d) -> bool {
    let taps = p.kernel_h as usize * p.kernel_w as usize * p.input.c as usize;
    p.layout == WeightLayout::Oc4SplitI16 && pairs_requantize(&p.requant, p.bias, p.output.c as usize, taps)
}

/// Whether the two-pixel kernel can requantize `channels` channels of `taps` taps with
/// `requant` and `bias`: the writer gives [`WeightLayout::Oc4SplitI16`] only to the convs
/// where it can (elsewhere the plan would run them with the reference kernel).
pub fn pairs_requantize(requant: &Requant, bias: I32Le, channels: usize, taps: usize) -> bool {
    let rq = Requantizer::new(requant, bias, taps);
    let full = (requant.act_min, requant.act_max) == (i8::MIN, i8::MAX);
    channels.is_multiple_of(2) && full && rq.sections >= channels && matches!(rq.fast, Some(Fast::Right | Fast::Wide))
}

/// `quads` quads of int8 from `src` widened to `dst` with `offset` added (a pointwise conv's
/// patch, a row of a window), on the M4: two quads a pass (two LDR, which may be unaligned, four
/// SXTAB16, one STM; an odd count widens its first quad alone).
///
/// # Safety
/// `src` holds `4 quads` readable bytes, `dst` `2 quads` writable words (word-aligned);
/// `quads` is at least 1.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[inline(never)]
unsafe fn widen_pixel(src: *const i8, dst: *mut u32, quads: usize, offset: u32) {
    // SAFETY: the caller's guarantees. Each quad's odd bytes widen in place of the word read
    // (r5, lr), its even bytes into the register below (r4, r12): STM stores them ascending.
    unsafe {
        core::arch::asm!(
            "lsrs r2, r2, #1",
            "bcc 2f",
            "ldr r5, [r0], #4",
            "sxtab16 r4, r3, r5",
            "sxtab16 r5, r3, r5, ror #8",
            "strd r4, r5, [r1], #8",
            // The flags are still LSRS's: no pair left.
            "beq 3f",
            "2:",
            "ldr r5, [r0], #4",
            "ldr lr, [r0], #4",
            "sxtab16 r4, r3, r5",
            "sxtab16 r5, r3, r5, ror #8",
            "sxtab16 r12, r3, lr",
            "sxtab16 lr, r3, lr, ror #8",
            "stm r1!, {{r4, r5, r12, lr}}",
            "subs r2, r2, #1",
            "bne 2b",
            "3:",
            inout("r0") src => _,
            inout("r1") dst => _,
            inout("r2") quads => _,
            in("r3") offset,
            out("r4") _,
            out("r5") _,
            out("r12") _,
            out("lr") _,
            options(nostack),
        );
    }
}

/// The widened patch of output pixel `q` (row-major). Out of line: both loops of
/// [`conv2d_s8_fast_io`] share one copy.
#[inline(never)]
fn pixel_patch(w: &Window, input: &[i8], q: usize, patch: &mut [u32]) {
    if w.pointwise {
        let ic = w.p.input.c as usize;
        // On the M4 a tail call to the leaf loop, without this function's prologue.
        #[cfg(all(target_arch = "arm", feature = "dsp"))]
        if (q + 1) * ic <= input.len() && ic <= 2 * patch.len() && ic >= 4 {
            // SAFETY: the ic bytes of input pixel q are in bounds, and the patch holds ic / 2
            // words (both checked).
            return unsafe { widen_pixel(input.as_ptr().add(q * ic), patch.as_mut_ptr(), ic / 4, w.offset) };
        }
        widen(sub(input, q * ic, ic), w.offset, patch);
    } else {
        let ow = (w.p.output.w as usize).max(1);
        conv_patch_padded(w, input, q / ow, q % ow, patch);
    }
}

#[inline(always)]
fn check_conv(p: &Conv2d, input: &[i8]) -> Result<(), Error> {
    expect_len(input.len(), p.input.len()?)?;
    let taps = p.kernel_h as usize * p.kernel_w as usize * p.input.c as usize;
    expect_len(p.weights.len(), p.layout.bytes(p.output.c as usize, taps).unwrap_or(usize::MAX))?;
    expect_len(p.bias.len(), p.output.c as usize)
}

pub fn conv2d_s8_fast(p: &Conv2d, input: &[i8], output: &mut [i8], scratch: &mut [u8]) -> Result<(), Error> {
    conv2d_s8_fast_io(p, &mut Io::Apart { input, output }, scratch)
}

/// How a blocked kernel splits its scratch: patches for `block` units of `unit_words` words,
/// then (int8 quads with a block of at least `min_block` units) one group's widened weights.
struct Blocks<'s> {
    patches: &'s mut [u32],
    wide: &'s mut [u32],
    block: usize,
    widen: bool,
}

impl<'s> Blocks<'s> {
    fn new(scratch: &'s mut [u8], layout: WeightLayout, stored_taps: usize, unit_words: usize, units: usize, min_block: usize) -> Result<Self, Error> {
        let all = all_scratch_words(scratch);
        let available = all.len();
        let wide_words = 2 * stored_taps;
        let widened = block_units(available.saturating_sub(wide_words), unit_words, units);
        // int4 weights are always widened (no kernel reads them as stored).
        let min_block = if layout == WeightLayout::Oc4Int4 { 1 } else { min_block };
        let widen = matches!(layout, WeightLayout::Oc4Quads | WeightLayout::Oc4Int4) && widened >= min_block;
        if layout == WeightLayout::Oc4Int4 && !widen {
            return Err(Error::BufferSize { expected: unit_words + wide_words, found: available });
        }
        let block = if widen { widened } else { block_units(available, unit_words, units) };
        if block == 0 && units > 0 {
            return Err(Error::BufferSize { expected: unit_words, found: available });
        }
        let Some((patches, rest)) = all.split_at_mut_checked(block * unit_words) else {
            return Err(Error::BufferSize { expected: block * unit_words, found: available });
        };
        let wide = if widen { rest.get_mut(..wide_words).unwrap_or(&mut []) } else { &mut [] };
        Ok(Blocks { patches, wide, block: block.max(1), widen })
    }
}

/// [`conv2d_s8_fast`] on an [`Io`], a block of output pixels at a time: the block's patches are
/// built, then each group of four channels runs over the whole block (with int8 quads widened
/// once per block, see [`BLOCK_PATCH_BYTES`]). Every patch of a block is built before any of its
/// outputs is written, which keeps [`Io::Shared`] safe.
pub fn conv2d_s8_fast_io(p: &Conv2d, io: &mut Io, scratch: &mut [u8]) -> Result<(), Error> {
    check_conv(p, io.input())?;
    expect_len(io.output_len(), p.output.len()?)?;
    let weights = words(p.weights).ok_or(Error::BadParameter { layer: 0, what: "weights not word-aligned" })?;
    let taps = p.kernel_h as usize * p.kernel_w as usize * p.input.c as usize;
    let (oh, ow, oc) = (p.output.h as usize, p.output.w as usize, p.output.c as usize);
    let stored = p.layout.stored_taps(taps);
    let (wpp, pixels) = (patch_words(stored).max(1), oh * ow);
    // int4 weights are always widened: the prepared requantization leaves room for that too.
    let wide = if p.layout == WeightLayout::Oc4Int4 { 2 * stored } else { 0 };
    let (rq, scratch) = Requantizer::prepared(&p.requant, p.bias, taps, scratch, 4 * (wpp + wide) + 3);
    if p.layout == WeightLayout::Oc4SplitI16 {
        // The requantization is checked where it is prepared (`pairs_run`: the plan gives these
        // weights to this kernel only where it is paired, see `pairs_supported`).
        return conv_pairs(p, io, weights, &rq, scratch);
    }
    let b = Blocks::new(scratch, p.layout, stored, wpp, pixels, 2)?;
    let window = Window::new(p, is_pointwise(p) && stored == taps);
    if !b.widen {
        if p.layout == WeightLayout::Oc4Int4 {
            return Err(Error::BufferSize { expected: wpp + 2 * stored, found: 0 });
        }
        // One pixel at a time: build its patch, then every group.
        let patch = b.patches.get_mut(..wpp).ok_or(Error::BufferSize { expected: wpp, found: 0 })?;
        let group = group_words(p.layout, taps).max(1);
        let mut acc = [[0i32; 4]; CHANNEL_GROUPS];
        // All of a pixel's groups in one round loop and one requantization call (no chunk
        // bookkeeping per pixel): i16 weights, at most CHANNEL_GROUPS groups.
        let (quads, groups) = (patch.len() / 2, weights.len() / group);
        let single = p.layout == WeightLayout::Oc4PairsI16 && group == 8 * quads && groups <= CHANNEL_GROUPS && 4 * groups >= oc;
        #[cfg(all(target_arch = "arm", feature = "dsp"))]
        let (in_len, pairs) = (io.input().len(), rq.pairs_run(oc));
        for k in 0..pixels {
            let q = io.pixel(k, pixels);
            // On the M4 both views from one call (the pixel loop's costliest overhead in the
            // narrow layers), used one after the other.
            #[cfg(all(target_arch = "arm", feature = "dsp"))]
            let out = {
                let (input, output) = io.pointers().ok_or(Error::BadParameter { layer: 0, what: "input or output outside its buffer" })?;
                // SAFETY: the input's in_len bytes are only read, and nothing is written while
                // the patch is built from them.
                let input = unsafe { core::slice::from_raw_parts(input, in_len) };
                pixel_patch(&window, input, q, patch);
                // SAFETY: pixel q's oc output bytes lie in the output (q < oh x ow, its length
                // checked above), and the input is not read while they are written.
                unsafe { core::slice::from_raw_parts_mut(output.add(q * oc), oc) }
            };
            #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
            let out = {
                pixel_patch(&window, io.input(), q, patch);
                io.output(q * oc, oc)
            };
            #[cfg(all(target_arch = "arm", feature = "dsp"))]
            if let Some(run) = pairs.as_ref().filter(|_| single) {
                dot_rounds_i16::<false>(patch, weights, quads, acc.get_mut(..groups).unwrap_or(&mut []));
                // SAFETY: `acc` holds 4 groups >= oc sums, the sections and the prepared
                // requantization oc channels (pairs_run), `out` oc bytes.
                unsafe { prepared_pairs(acc.as_ptr() as *const i32, out.as_mut_ptr(), run) };
                continue;
            }
            #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
            if single {
                dot_rounds_i16::<false>(patch, weights, quads, acc.get_mut(..groups).unwrap_or(&mut []));
                rq.channels(acc.as_flattened(), 0, out);
                continue;
            }
            // Up to CHANNEL_GROUPS groups' sums, then one requantization call for them.
            for (chunk, groups) in weights.chunks((group * CHANNEL_GROUPS).max(1)).enumerate() {
                let n = 4 * dot_groups(patch, groups, group, p.layout, &mut acc);
                let first = 4 * CHANNEL_GROUPS * chunk;
                let len = n.min(oc.saturating_sub(first));
                let out = out.get_mut(first..first + len).unwrap_or(&mut []);
                #[cfg(all(target_arch = "arm", feature = "dsp"))]
                if let Some(run) = pairs.as_ref().filter(|_| len % 2 == 0 && !out.is_empty()) {
                    // SAFETY: `acc` holds n >= len sums, the sections and the prepared
                    // requantization first + len <= oc channels (pairs_run), `out` len bytes.
                    unsafe { prepared_pairs(acc.as_ptr() as *const i32, out.as_mut_ptr(), &run.from(first, len)) };
                    continue;
                }
                rq.channels(acc.as_flattened(), first, out);
            }
        }
        return Ok(());
    }
    let mut first = 0;
    while first < pixels {
        let count = b.block.min(pixels - first);
        for (i, patch) in b.patches.chunks_exact_mut(wpp).take(count).enumerate() {
            let q = io.pixel(first + i, pixels);
            pixel_patch(&window, io.input(), q, patch);
        }
        for (g, group) in weights.chunks_exact(group_words(p.layout, taps).max(1)).enumerate() {
            widen_any(p.layout, group, b.wide);
            for (i, patch) in b.patches.chunks_exact(wpp).take(count).enumerate() {
                let q = io.pixel(first + i, pixels);
                rq.group(int4_sums(p.layout, dot_oc4_i16(patch, b.wide)), g, io.output(q * oc, oc));
            }
        }
        first += count;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Residual block: conv, conv, ADD over the block's input, a row at a time

/// Conv A and conv B of a residual block keep the map's size (stride 1, SAME or a 1-row
/// kernel), B maps A's output back to A's input shape, the ADD is one [`add_s8_fast`] runs,
/// and B's window reaches at most one row below its output row beyond what A's window above
/// it needs, so output row `r` may be written over input row `r`:
/// `kernel_h(B) >= top_pad(A) + top_pad(B) + 1`.
pub fn residual_block_s8_fast_supported(a: &Conv2d, b: &Conv2d, add: &Add) -> bool {
    let keeps_size = |p: &Conv2d| p.stride_h == 1 && p.stride_w == 1 && p.input.h == p.output.h && p.input.w == p.output.w && conv2d_s8_fast_supported(p);
    let h = a.input.h as usize;
    let (ta, tb) = (a.padding.leading(h, a.kernel_h as usize, 1, h), b.padding.leading(h, b.kernel_h as usize, 1, h));
    keeps_size(a) && keeps_size(b) && b.input == a.output && b.output == a.input && add_s8_fast_supported(add) && a.input.len() == Ok(add.len) && b.kernel_h as usize > ta + tb
}

/// The conv that computes one output row of `p` (which keeps the map's size) from a window of
/// `kernel_h` input rows; padding rows are materialized as the input's zero point, which
/// contributes exactly what a skipped tap does (nothing).
fn row_conv<'a>(p: &Conv2d<'a>) -> Conv2d<'a> {
    let mut row = *p;
    row.input.h = p.kernel_h as u16;
    row.output.h = 1;
    row
}

fn row_bytes(s: Shape) -> usize {
    s.w as usize * s.c as usize
}

/// The ADD's table, B's window of input rows, A's window (used at the borders), B's output
/// row, the sum row, and the convs' scratch (last: the convs take what is left).
pub fn residual_block_s8_fast_scratch_bytes(a: &Conv2d, b: &Conv2d) -> usize {
    let conv = conv2d_s8_fast_scratch_bytes(&row_conv(a)).max(conv2d_s8_fast_scratch_bytes(&row_conv(b)));
    ADD_TABLE_BYTES + b.kernel_h as usize * row_bytes(b.input) + (a.kernel_h as usize + 2) * row_bytes(a.input) + conv
}

/// A row kernel's result in the block: its sizes were checked with the block's, so a failure
/// is a plan the block does not fit, reported as one error (built here: passing the kernel's
/// error on would copy it with `memcpy`, which the inference code then links).
#[inline(always)]
fn row_step(result: Result<(), Error>) -> Result<(), Error> {
    match result {
        Ok(()) => Ok(()),
        Err(_) => Err(Error::BadParameter { layer: 0, what: "residual block: a row kernel refused its rows" }),
    }
}

/// Ops conv A, conv B, ADD(X, B) as one step over X (the input of A), row by row: B's input rows
/// live in a window of `kernel_h(B)` rows; each output row is written once its input row has
/// been read for the last time, so on [`Io::Shared`] with the output on the input (offset 0)
/// the block needs X plus a few rows. `x_first`: X is the ADD's first input. For a block that
/// [`residual_block_s8_fast_supported`] accepts (the plan checks; on others the results are
/// wrong, never out of bounds).
pub fn residual_block_s8_fast_io(a: &Conv2d, b: &Conv2d, add: &Add, x_first: bool, io: &mut Io, scratch: &mut [u8]) -> Result<(), Error> {
    let h = a.input.h as usize;
    let (row_x, row_y) = (row_bytes(a.input), row_bytes(b.input));
    expect_len(io.input().len(), h * row_x)?;
    expect_len(io.output_len(), h * row_x)?;
    let (ra, rb) = (row_conv(a), row_conv(b));
    let (kb, tb) = (b.kernel_h as usize, b.padding.leading(h, b.kernel_h as usize, 1, h));
    let rows = kb * row_y + (a.kernel_h as usize + 2) * row_x;
    let short = Error::BufferSize { expected: ADD_TABLE_BYTES + rows, found: scratch.len() };
    // The table's words from the first aligned byte, the rows word-aligned after them (row bytes
    // are whole words in the blocks the plan fuses), so their copies move words.
    let table_bytes = ((scratch.as_ptr() as usize).wrapping_neg() & 3) + 4 * 256;
    let (table, rest) = scratch.split_at_mut_checked(table_bytes).ok_or(short)?;
    let (rows, conv_scratch) = rest.split_at_mut_checked(rows).ok_or(short)?;
    let (window_b, rest) = as_i8_mut(rows).split_at_mut_checked(kb * row_y).ok_or(short)?;
    let (window_a, rest) = rest.split_at_mut_checked(a.kernel_h as usize * row_x).ok_or(short)?;
    let (conv_row, sum_row) = rest.split_at_mut_checked(row_x).ok_or(short)?;
    // Window row i holds B's input row r - tb + i (A's output row, or B's zero point outside).
    for (i, slot) in window_b.chunks_exact_mut(row_y.max(1)).enumerate() {
        row_step(conv_a_row(&ra, io.input(), i as isize - tb as isize, h, window_a, slot, b.input_zp, conv_scratch))?;
    }
    for r in 0..h {
        if r > 0 {
            // Each row up by one (row-sized copies that do not overlap), A's next row last.
            for i in 1..kb {
                let Some((upper, lower)) = window_b.split_at_mut_checked(i * row_y) else { break };
                copy_bytes(sub_mut(upper, (i - 1) * row_y, row_y), lower);
            }
            let last = sub_mut(window_b, (kb - 1) * row_y, row_y);
            row_step(conv_a_row(&ra, io.input(), (r + kb - 1 - tb) as isize, h, window_a, last, b.input_zp, conv_scratch))?;
        }
        row_step(conv2d_s8_fast(&rb, window_b, conv_row, conv_scratch))?;
        let x_row = sub(io.input(), r * row_x, row_x);
        let (in1, in2) = if x_first { (x_row, &*conv_row) } else { (&*conv_row, x_row) };
        row_step(add_elements(add, in1, in2, sum_row, table, r == 0))?;
        copy_bytes(io.output(r * row_x, row_x), sum_row);
    }
    Ok(())
}

/// Output row `y` of conv A into `out` (`pad` when `y` is outside the map), from its window of
/// input rows copied into `window`, with zero-point rows at the borders.
#[allow(clippy::too_many_arguments)]
fn conv_a_row(ra: &Conv2d, x: &[i8], y: isize, h: usize, window: &mut [i8], out: &mut [i8], pad: i32, scratch: &mut [u8]) -> Result<(), Error> {
    if y < 0 || y >= h as isize {
        fill_bytes(out, pad as i8);
        return Ok(());
    }
    let row = row_bytes(ra.input);
    let first = y - ra.padding.leading(h, ra.kernel_h as usize, 1, h) as isize;
    // A window of rows inside the map: conv A reads them where they are.
    let rows = ra.kernel_h as usize * row;
    if let Some(inside) = usize::try_from(first).ok().and_then(|f| x.get(f * row..f * row + rows)) {
        return conv2d_s8_fast(ra, inside, out, scratch);
    }
    for (k, slot) in window.chunks_exact_mut(row.max(1)).enumerate() {
        let iy = first + k as isize;
        if iy >= 0 && (iy as usize) < h {
            copy_bytes(slot, sub(x, iy as usize * row, row));
        } else {
            fill_bytes(slot, ra.input_zp as i8);
        }
    }
    conv2d_s8_fast(ra, window, out, scratch)
}

// ---------------------------------------------------------------------------------------------
// Fused convolution + max-pool

/// A conv as [`conv2d_s8_fast_supported`] followed by a VALID max-pool over its output, with
/// right shifts only (so requantization is monotonic in the accumulator).
pub fn conv2d_maxpool_s8_fast_supported(conv: &Conv2d, pool: &Pool) -> bool {
    let taps = conv.kernel_h as usize * conv.kernel_w as usize * conv.input.c as usize;
    conv_rows_in_quads(conv)
        && taps.is_multiple_of(if conv.layout == WeightLayout::Oc4Int4 { 8 } else { 4 })
        && pool.padding == Padding::Valid
        && all_shifts_non_positive(&conv.requant)
}

pub fn conv2d_maxpool_s8_fast_scratch_bytes(conv: &Conv2d, pool: &Pool) -> usize {
    let window = pool.kernel_h as usize * pool.kernel_w as usize;
    let taps = conv.kernel_h as usize * conv.kernel_w as usize * conv.input.c as usize;
    let outputs = pool.output.h as usize * pool.output.w as usize;
    let blocked = match conv.layout {
        WeightLayout::Oc4Quads if window >= 2 => blocked_scratch_bytes(window * patch_words(taps), outputs, taps, 1),
        WeightLayout::Oc4Int4 => blocked_scratch_bytes(window * patch_words(conv.layout.stored_taps(taps)), outputs, conv.layout.stored_taps(taps), 1),
        _ => None,
    };
    blocked.unwrap_or(4 * window * patch_words(taps) + 3)
}

/// The final value of a pooled output from the max accumulator of its window.
#[inline(always)]
fn pooled(conv: &Conv2d, pool: &Pool, max_acc: i32, c: usize) -> i8 {
    conv.requant.apply(max_acc + conv.bias.get(c), c).bounded(pool.act_min, pool.act_max)
}

/// A block of pooled outputs at a time: the patches of every conv pixel under the block's
/// pooling windows are built once, then each group of four channels runs over them (int8
/// quads and int4 widened once per block where the scratch has room for a widened group, other
/// weights read as stored).
#[inline(never)]
pub fn conv2d_maxpool_s8_fast(conv: &Conv2d, pool: &Pool, input: &[i8], output: &mut [i8], scratch: &mut [u8]) -> Result<(), Error> {
    check_conv(conv, input)?;
    expect_len(output.len(), pool.output.len()?)?;
    let weights = words(conv.weights).ok_or(Error::BadParameter { layer: 0, what: "weights not word-aligned" })?;
    // Kernel rows in whole quads (the fused kernel's condition): no tap is padded.
    let taps = conv.kernel_h as usize * conv.kernel_w as usize * conv.input.c as usize;
    let (ph, pw, oc) = (pool.output.h as usize, pool.output.w as usize, conv.output.c as usize);
    let (kw, sh, sw) = (pool.kernel_w as usize, pool.stride_h as usize, pool.stride_w as usize);
    let window = (pool.kernel_h as usize * kw).max(1);
    let wpp = patch_words(taps).max(1);
    let input_offset = offset_pair(conv.input_zp);
    let outputs = ph * pw;
    let b = Blocks::new(scratch, conv.layout, taps, window * wpp, outputs, 1)?;
    // Weights read as stored where the scratch holds no widened group (i16, or int8 quads
    // with too little scratch), else widened once per block.
    let dot: fn(&[u32], &[u32]) -> [i32; 4] = if b.widen || conv.layout == WeightLayout::Oc4PairsI16 { dot_oc4_i16 } else { dot_oc4_quads };
    let mut first = 0;
    while first < outputs {
        let count = b.block.min(outputs - first);
        for (n, patch) in b.patches.chunks_exact_mut(wpp).take(count * window).enumerate() {
            let (o, slot) = (first + n / window, n % window);
            let (py, px) = (o / pw.max(1), o % pw.max(1));
            conv_patch(conv, input, py * sh + slot / kw.max(1), px * sw + slot % kw.max(1), input_offset, patch);
        }
        for (g, stored_group) in weights.chunks_exact(group_words(conv.layout, taps).max(1)).enumerate() {
            let group_weights = if b.widen {
                widen_any(conv.layout, stored_group, b.wide);
                &*b.wide
            } else {
                stored_group
            };
            for (i, group) in b.patches.chunks_exact((window * wpp).max(1)).take(count).enumerate() {
                let mut max = [i32::MIN; 4];
                for patch in group.chunks_exact(wpp) {
                    let acc = dot(patch, group_weights);
                    for j in 0..4 {
                        max[j] = max[j].max(acc[j]);
                    }
                }
                // int4's 16-fold sums: the maximum of 16 a is 16 times the maximum of a.
                let max = int4_sums(conv.layout, max);
                let out = sub_mut(output, (first + i) * oc, oc);
                for (j, &m) in max.iter().enumerate() {
                    let c = 4 * g + j;
                    if let Some(o) = out.get_mut(c) {
                        *o = pooled(conv, pool, m, c);
                    }
                }
            }
        }
        first += count;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Winograd F(2x2, 3x3) convolution + 2x2 max-pool

/// Winograd weights ([`WeightLayout::Winograd2x2`]) of a 3x3 stride-1 VALID conv followed by a
/// 2x2 stride-2 VALID max-pool, right shifts only, and 4x the worst accumulator within int32:
/// the output transform yields exactly 4x the direct accumulator, so the result is the direct
/// convolution's, bit for bit (sums that wrap on the way are harmless).
pub fn conv2d_maxpool_s8_winograd_supported(conv: &Conv2d, pool: &Pool) -> bool {
    conv.layout == WeightLayout::Winograd2x2
        && (conv.kernel_h, conv.kernel_w, conv.stride_h, conv.stride_w) == (3, 3, 1, 1)
        && conv.padding == Padding::Valid
        && (pool.kernel_h, pool.kernel_w, pool.stride_h, pool.stride_w) == (2, 2, 2, 2)
        && pool.padding == Padding::Valid
        && all_shifts_non_positive(&conv.requant)
        && words(conv.weights).is_some()
        && conv.input.c.is_multiple_of(4)
        && 4 * 9 * (conv.input.c as i64) * 128 * 255 < 1 << 31
}

/// The transformed input tile: 16 positions of `ic4` i16 values.
pub fn conv2d_maxpool_s8_winograd_scratch_bytes(conv: &Conv2d, _pool: &Pool) -> usize {
    4 * 16 * (conv.input.c as usize).div_ceil(4) * 2 + 3
}

/// `M[p]` for the 16 tile positions of one group of four channels: the i16 dot products of the
/// transformed input `v` (`per_position` words a position) with the group's Winograd weights
/// `u` (four channels: 4 x `per_position` words a position), in one [`dot_rounds_i16`] loop
/// (the patch, the position's transformed inputs, advancing with the weights).
fn winograd_products(v: &[u32], u: &[u32], per_position: usize, m: &mut [[i32; 4]; 16]) {
    dot_rounds_i16::<true>(v, u, per_position / 2, m)
}

/// The largest of channel `j`'s four tile outputs `A^T M A` (`A^T` rows (1, 1, 1, 0) and
/// (0, 1, -1, -1)), 4x the direct accumulators (wrapping sums: the results fit).
#[inline(always)]
fn winograd_tile_max(m: &[[i32; 4]; 16], j: usize) -> i32 {
    // Channel j's 16 values lie 4 words apart from word j on.
    let Some(column) = m.as_flattened().get(j..).and_then(|c| c.first_chunk::<61>()) else {
        return 0;
    };
    let at = |r: usize, s: usize| column[4 * (4 * r + s)];
    // A^T M, column by column: (m0s + m1s + m2s, m1s - m2s - m3s).
    let col = |s: usize| (at(0, s).wrapping_add(at(1, s)).wrapping_add(at(2, s)), at(1, s).wrapping_sub(at(2, s)).wrapping_sub(at(3, s)));
    let (c0, c1, c2, c3) = (col(0), col(1), col(2), col(3));
    let y00 = c0.0.wrapping_add(c1.0).wrapping_add(c2.0);
    let y01 = c1.0.wrapping_sub(c2.0).wrapping_sub(c3.0);
    let y10 = c0.1.wrapping_add(c1.1).wrapping_add(c2.1);
    let y11 = c1.1.wrapping_sub(c2.1).wrapping_sub(c3.1);
    y00.max(y01).max(y10.max(y11))
}

/// `V = B^T d B` of the 4x4 input tile at `(y0, x0)`, minus the zero point, for every input
/// channel (whole channel quads): position `p`'s values in `v[p * ic / 2..]`, in the patch order
/// of [`dot_oc4_i16`] (per channel quad `(x0, x2), (x1, x3)`, as [`widen`]); two channels per
/// instruction with 16-bit lane adds (every value stays within 4 x 255).
fn winograd_input(input: &[i8], iw: usize, ic: usize, (y0, x0): (usize, usize), zp: i32, v: &mut [u32]) {
    let (per_position, quads) = (ic / 2, ic / 4);
    let input_offset = offset_pair(zp);
    let (pixels, _) = input.as_chunks::<4>();
    for q in 0..quads {
        // The tile's 16 pixels of this quad, each word loaded and widened once. The tile arrays
        // are written in full before they are read, not zeroed first (a zeroed array is a
        // memset call, which the inference code would otherwise link).
        let mut tile = core::mem::MaybeUninit::<[[[u32; 4]; 4]; 2]>::uninit();
        let at = tile.as_mut_ptr() as *mut u32;
        for r in 0..4 {
            for s in 0..4 {
                let word = pixels.get(((y0 + r) * iw + x0 + s) * quads + q).map_or(0, |b| u32::from_le_bytes(b.map(|x| x as u8)));
                let (lo, hi) = widen_quad(word, input_offset);
                // SAFETY: words 4 r + s and 16 + 4 r + s of the 32 of `tile`.
                unsafe { (at.add(4 * r + s).write(lo), at.add(16 + 4 * r + s).write(hi)) };
            }
        }
        // SAFETY: all 32 words were written above.
        let d = unsafe { tile.assume_init_ref() };
        for (half, d) in d.iter().enumerate() {
            let mut rows = core::mem::MaybeUninit::<[[u32; 4]; 4]>::uninit();
            let at = rows.as_mut_ptr() as *mut u32;
            for s in 0..4 {
                // SAFETY: words s, 4 + s, 8 + s and 12 + s of the 16 of `rows`.
                unsafe {
                    at.add(s).write(ssub16(d[0][s], d[2][s]));
                    at.add(4 + s).write(sadd16(d[1][s], d[2][s]));
                    at.add(8 + s).write(ssub16(d[2][s], d[1][s]));
                    at.add(12 + s).write(ssub16(d[1][s], d[3][s]));
                }
            }
            // SAFETY: all 16 words were written above.
            let t = unsafe { rows.assume_init_ref() };
            for (r, row) in t.iter().enumerate() {
                let values = [ssub16(row[0], row[2]), sadd16(row[1], row[2]), ssub16(row[2], row[1]), ssub16(row[1], row[3])];
                for (s, &value) in values.iter().enumerate() {
                    if let Some(w) = v.get_mut((4 * r + s) * per_position + 2 * q + half) {
                        *w = value;
                    }
                }
            }
        }
    }
}

/// Per pooled output: the 2x2 conv tile under it by Winograd F(2x2, 3x3) (per group of four
/// channels, 16 i16 dot products over the input channels, one per tile position, then `A^T M A`),
/// its maximum, requantized once.
#[inline(never)]
pub fn conv2d_maxpool_s8_winograd(conv: &Conv2d, pool: &Pool, input: &[i8], output: &mut [i8], scratch: &mut [u8]) -> Result<(), Error> {
    check_conv(conv, input)?;
    expect_len(output.len(), pool.output.len()?)?;
    let weights = words(conv.weights).ok_or(Error::BadParameter { layer: 0, what: "weights not word-aligned" })?;
    let (iw, ic, oc) = (conv.input.w as usize, conv.input.c as usize, conv.output.c as usize);
    let (ph, pw) = (pool.output.h as usize, pool.output.w as usize);
    let ic4 = ic.div_ceil(4) * 4;
    let per_position = (ic4 / 2).max(1);
    let v = scratch_words(scratch, 16 * per_position)?;
    let requantizer = Requantizer::new(&conv.requant, conv.bias, 9 * ic);
    let group_words = (2 * 16 * ic4).max(1);
    let mut m = [[0i32; 4]; 16];
    for py in 0..ph {
        for px in 0..pw {
            winograd_input(input, iw, ic, (2 * py, 2 * px), conv.input_zp, v);
            let out = sub_mut(output, (py * pw + px) * oc, oc);
            for (g, u) in weights.chunks_exact(group_words).enumerate() {
                winograd_products(v, u, per_position, &mut m);
                // The maximum of the tile is 4x the maximum of the direct accumulators (an
                // arithmetic shift is monotonic), requantized once.
                let mut maxima = [0i32; 4];
                for (j, max) in maxima.iter_mut().enumerate() {
                    *max = winograd_tile_max(&m, j) >> 2;
                }
                requantizer.group(maxima, g, out);
            }
            for o in out.iter_mut() {
                *o = (*o).bounded(pool.act_min, pool.act_max);
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
// Out of line: inlined into the engine's loop, its codegen (and 30,000 instructions of MNIST's
// first layer) moves with every change elsewhere in the loop.
#[inline(never)]
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
    let too_small = Error::BufferSize { expected: pairs * oc + pw * window * pairs + pw, found: all.len() };
    let (wide, rest) = all.split_at_mut_checked(pairs * oc).ok_or(too_small)?;
    let (patches, maxes) = rest.split_at_mut_checked(pw * window * pairs).ok_or(too_small)?;
    let pairs = pairs.max(1);

    // Weights widened to i16 pairs, taps in natural order, an odd last tap paired with 0.
    for (c, dst) in wide.chunks_exact_mut(pairs).enumerate() {
        let w = sub(conv.weights, c * taps, taps);
        for (k, d) in dst.iter_mut().enumerate() {
            let tap = |i: usize| w.get(i).map_or(0, |&x| x as i32);
            *d = pack16(tap(2 * k), tap(2 * k + 1));
        }
    }
    let (sy, sx) = (conv.stride_h as usize, conv.stride_w as usize);
    let zp = conv.input_zp;
    // The SMMULR form where it is exact (one clamp to both the conv's and the pool's range:
    // clamping twice to two ranges is clamping once to their intersection).
    let right = requant_form(&conv.requant, conv.bias, taps) == Some(Fast::Right) && conv.requant.act_min.max(pool.act_min) <= conv.requant.act_max.min(pool.act_max);
    for py in 0..ph {
        // The patches of every conv pixel under every pooling window of this row.
        for (n, patch) in patches.chunks_exact_mut(pairs).enumerate() {
            let (px, slot) = (n / window.max(1), n % window.max(1));
            let (y0, x0) = ((py * sh + slot / kw.max(1)) * sy, (px * sw + slot % kw.max(1)) * sx);
            let mut words = patch.iter_mut();
            let mut low: Option<i32> = None;
            for ky in 0..ckh {
                for &x in sub(input, (y0 + ky) * iw + x0, ckw) {
                    let v = x as i32 - zp;
                    match low.take() {
                        None => low = Some(v),
                        Some(l) => {
                            if let Some(w) = words.next() {
                                *w = pack16(l, v);
                            }
                        }
                    }
                }
            }
            if let (Some(l), Some(w)) = (low, words.next()) {
                *w = pack16(l, 0);
            }
        }
        for (c, w) in wide.chunks_exact(pairs).enumerate() {
            window_maxima(patches, w, window, maxes);
            let (bias, multiplier, shift) = (conv.bias.get(c), conv.requant.multipliers.get(c), conv.requant.shifts.get(c));
            let r = &conv.requant;
            let row = output.get_mut(py * pw * oc + c..).unwrap_or(&mut []);
            let (lo, hi) = (r.act_min.max(pool.act_min) as i32, r.act_max.min(pool.act_max) as i32);
            for (o, &m) in row.iter_mut().step_by(oc.max(1)).zip(maxes.iter()) {
                *o = if right {
                    requant_smmulr(m as i32 + bias, multiplier, shift, r.output_zp, lo, hi)
                } else {
                    r.apply(m as i32 + bias, c).bounded(pool.act_min, pool.act_max)
                };
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
    for (m, group) in maxes.iter_mut().zip(patches.chunks_exact((window * weights.len()).max(1))) {
        let mut max = i32::MIN;
        for patch in group.chunks_exact(weights.len().max(1)) {
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
// Depthwise convolution, four channels at a time

/// Depth multiplier 1, channels a multiple of 4 (one word of input and one of weights carry
/// four channels' taps), requantization by [`Fast::Right`] with the zero point folded
/// ([`zero_point_folds`]) and no clamp but int8's (TFLM's Prepare gives these to ReLU and
/// ReLU6 layers quantized to their range, and to every depthwise conv of the MLPerf Tiny
/// models): the kernel requantizes inline.
pub fn depthwise_conv2d_s8_fast_supported(p: &DepthwiseConv2d) -> bool {
    depthwise_fast_shape(p) && zero_point_folds(&p.requant)
}

/// [`depthwise_conv2d_s8_fast_supported`] but for the zero points' folding, which the kernel
/// checks as it prepares the constants ([`depthwise_prepare`]).
#[inline(always)]
fn depthwise_fast_shape(p: &DepthwiseConv2d) -> bool {
    let taps = p.kernel_h as usize * p.kernel_w as usize;
    p.depth_multiplier == 1 && p.input.c.is_multiple_of(4) && (p.requant.act_min, p.requant.act_max) == (i8::MIN, i8::MAX) && requant_form(&p.requant, p.bias, taps) == Some(Fast::Right)
}

/// Channel groups per requantization call of the direct conv (their sums sit on the stack).
const CHANNEL_GROUPS: usize = 16;

/// Taps per window (the tap loop takes any count; a 3x3 window runs unrolled).
fn depthwise_taps(p: &DepthwiseConv2d) -> usize {
    p.kernel_h as usize * p.kernel_w as usize
}

/// Words of one channel group's unit in the depthwise scratch: each channel's sum to start
/// from (4), the widened weights (2 a tap), then per pair of channels their folded zero points,
/// multipliers and right shifts less one (6, see [`folded_zero_point`]), in the order
/// [`depthwise_pixel`] reads them.
fn depthwise_unit_words(taps: usize) -> usize {
    2 * taps + 16
}

/// Words of the depthwise scratch: two tap tables (of a window inside the input, and of the
/// pixel at an edge), a word of zero points per group (the taps outside the input read it),
/// and every group's unit ([`depthwise_unit_words`]).
#[inline(always)]
fn depthwise_scratch_words(p: &DepthwiseConv2d) -> usize {
    let (taps, groups) = (depthwise_taps(p), p.input.c as usize / 4);
    2 * taps + groups * (1 + depthwise_unit_words(taps))
}

pub fn depthwise_conv2d_s8_fast_scratch_bytes(p: &DepthwiseConv2d) -> usize {
    4 * depthwise_scratch_words(p) + 3
}

/// The weights and per-channel constants of every group, built once per call: weights doubled
/// and widened, and a start of `2 (bias - zp x (sum of the channel's weights))`, so that the
/// sum over every tap (those outside the input read the zero point, adding 0 as TFLite's
/// skipped taps do) is `2 (acc + bias)`, what [`requant_smmulr`] multiplies (exact under
/// [`Fast::Right`]); then per pair of channels (0 and 1, then 2 and 3) their folded zero points,
/// multipliers and right shifts less one ([`folded_zero_point`]). False where a channel's
/// zero point does not fold ([`zero_point_folds`]).
#[inline(always)]
fn depthwise_prepare(p: &DepthwiseConv2d, taps: usize, units: &mut [u32]) -> bool {
    let (c, real, words) = (p.input.c as usize, p.kernel_h as usize * p.kernel_w as usize, depthwise_unit_words(taps));
    for (g, unit) in units.chunks_exact_mut(words).enumerate() {
        let Some((start, rest)) = unit.split_first_chunk_mut::<4>() else { continue };
        // Each channel's sum of doubled weights, lane by lane (SMLABB / SMLATT by 1).
        let (mut s0, mut s1, mut s2, mut s3) = (0, 0, 0, 0);
        for (t, w) in rest.as_chunks_mut::<2>().0.iter_mut().take(taps).enumerate() {
            let q = p.weights.get(t * c + 4 * g..).and_then(|q| q.first_chunk::<4>()).filter(|_| t < real).map_or(0, |q| u32::from_le_bytes(q.map(|v| v as u8)));
            let (even, odd) = (sxtb16(q), sxtb16_ror8(q));
            let (even, odd) = (sadd16(even, even), sadd16(odd, odd));
            *w = [even, odd];
            (s0, s1, s2, s3) = (smlabb(even, 1, s0), smlabb(odd, 1, s1), smlatt(even, 1 << 16, s2), smlatt(odd, 1 << 16, s3));
        }
        *start = [s0, s1, s2, s3].map(|s| s as u32);
    }
    // Per channel: the start, 2 bias - zp x (sum of 2w), and the folded constants.
    // The sign of `m | (21 - s)` is clear while every channel folds (m >= 0, s <= 21).
    let (r, mut folds) = (&p.requant, 0i32);
    for (ch, ((b, m), shift)) in p.bias.iter().zip(r.multipliers.iter()).zip(r.shifts.iter()).enumerate() {
        let (unit, j) = (words * (ch / 4), ch & 3);
        let (k, s) = folded_zero_point(m, shift, r.output_zp);
        folds |= m | (21 - s as i32);
        if let Some(start) = units.get_mut(unit + j) {
            *start = (*start as i32).wrapping_mul(p.input_zp.wrapping_neg()).wrapping_add(b.wrapping_mul(2)) as u32;
        }
        let at = unit + 4 + 2 * taps + 6 * (j / 2) + j % 2;
        if let Some([k_at, _, m_at, _, s_at]) = units.get_mut(at..).and_then(|w| w.first_chunk_mut::<5>()) {
            (*k_at, *m_at, *s_at) = (k, m as u32, s);
        }
    }
    folds >= 0
}

/// The taps of output pixel `(oy, ox)`: each the byte offset of its input pixel, or `outside`
/// (which addresses the zero-point words) where the window leaves the input.
fn depthwise_table(p: &DepthwiseConv2d, (oy, ox): (usize, usize), (pad_top, pad_left): (usize, usize), outside: u32, table: &mut [u32]) {
    let (ih, iw, c) = (p.input.h as isize, p.input.w as isize, p.input.c as usize);
    let (kh, kw) = (p.kernel_h as usize, p.kernel_w as usize);
    let y0 = (oy * p.stride_h as usize) as isize - pad_top as isize;
    let x0 = (ox * p.stride_w as usize) as isize - pad_left as isize;
    let mut entries = table.iter_mut();
    for y in y0..y0 + kh as isize {
        let row = (0..ih).contains(&y);
        for x in x0..x0 + kw as isize {
            if let Some(entry) = entries.next() {
                *entry = if row && (0..iw).contains(&x) { ((y * iw + x) as usize * c) as u32 } else { outside };
            }
        }
    }
}

/// One output pixel's `groups` groups of four channels, from `input` (the table's offsets are
/// from there; each next group is 4 bytes on) and `units` (see [`depthwise_prepare`], read in
/// one pass): per group the sums start from the unit's first 4 words (one LDM), per tap one LDR
/// of input (two SXTB16) and one LDRD of widened weights (SMLABB/SMLATT), in a loop of one
/// tap (a 3x3 window unrolled), then the four channels are requantized with their zero points
/// folded ([`folded_zero_point`]: per pair one LDM and one LDRD of constants, per channel ADD,
/// SMMLAR, ASR, SSAT) into `out`.
///
/// `pixels` such output pixels of a row, the same table for all: after a pixel, the input
/// pointer moves `in_step` bytes on from past its last group and the output pointer `out_step`
/// bytes on from past its last output (both wrapping: a run backwards has them negative).
///
/// # Safety
/// Every table offset plus `4 g + 3` for `g < groups` addresses readable memory from
/// each pixel's input pointer; `units` holds `groups` units of
/// [`depthwise_unit_words`]`(table.len())` words (word-aligned); each pixel's output pointer
/// has `4 groups` bytes.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[inline(never)]
unsafe fn depthwise_pixel(table: &[u32], input: *const i8, units: *const u32, out: *mut i8, groups: usize, (pixels, in_step, out_step): (usize, usize, usize)) {
    let taps = table.len();
    if groups == 0 || taps == 0 || pixels == 0 {
        return;
    }
    // Registers: sums r0-r3 (LDM), input pointer r4, units pointer r5, weights (and requant
    // constants) r8-r9, the input word r10, the table pointer r11, the tap offset (and the
    // output pointer while requantizing) r12, the taps lr; in a 3x3 window two taps at a time
    // (`tap2`) with r6, r7 and lr as well. r8-r11 take one LDM of a pair's folded zero points
    // and multipliers.
    macro_rules! tap { () => { concat!(
        "ldr r12, [r11], #4\n",
        "ldr r10, [r4, r12]\n",
        "ldrd r8, r9, [r5], #8\n",
        "sxtb16 r12, r10\n",
        "sxtb16 r10, r10, ror #8\n",
        "smlabb r0, r12, r8, r0\n",
        "smlatt r2, r12, r8, r2\n",
        "smlabb r1, r10, r9, r1\n",
        "smlatt r3, r10, r9, r3\n",
    ) } }
    // Taps t and t + 1 of a 3x3 window: one LDRD of both table offsets, two LDR of input (the
    // second pipelines), one LDM of both taps' weights (r6, r8, r9, r12), lr the unpacking
    // register: 23 cycles where two `tap!` take 26.
    macro_rules! tap2 { () => { concat!(
        "ldrd r12, r7, [r11], #8\n",
        "ldr r10, [r4, r12]\n",
        "ldr r7, [r4, r7]\n",
        "ldm r5!, {{r6, r8, r9, r12}}\n",
        "sxtb16 lr, r10\n",
        "smlabb r0, lr, r6, r0\n",
        "smlatt r2, lr, r6, r2\n",
        "sxtb16 r10, r10, ror #8\n",
        "smlabb r1, r10, r8, r1\n",
        "smlatt r3, r10, r8, r3\n",
        "sxtb16 lr, r7\n",
        "smlabb r0, lr, r9, r0\n",
        "smlatt r2, lr, r9, r2\n",
        "sxtb16 r7, r7, ror #8\n",
        "smlabb r1, r7, r12, r1\n",
        "smlatt r3, r7, r12, r3\n",
    ) } }
    // Channels $a and $b of the group: k + (a >> 31), SMMLAR by the multiplier, then the right
    // shift less one.
    macro_rules! scale2 { ($a:literal, $b:literal) => { concat!(
        "ldm r5!, {{r8, r9, r10, r11}}\n",
        "add r8, r8, ", $a, ", asr #31\n",
        "add r9, r9, ", $b, ", asr #31\n",
        "smmlar ", $a, ", ", $a, ", r10, r8\n",
        "smmlar ", $b, ", ", $b, ", r11, r9\n",
        "ldrd r8, r9, [r5], #8\n",
        "asr ", $a, ", ", $a, ", r8\n",
        "asr ", $b, ", ", $b, ", r9\n",
    ) } }
    // Channel $a halved and clamped to int8, stored.
    macro_rules! store { ($a:literal) => { concat!(
        "ssat ", $a, ", #8, ", $a, ", asr #1\n",
        "strb ", $a, ", [r12], #1\n",
    ) } }
    // SAFETY: the caller's guarantees. r6 and r7 (no operand's: the compiler reserves them)
    // are saved first; the 32 bytes below them hold the table start, the end of the units, the
    // output pointer, the taps, the pixels left, the units' start and the two steps, restored
    // before the end. Each group reloads the taps into lr (a 3x3 window unpacks in it).
    unsafe {
        core::arch::asm!(
            "push {{r6, r7}}",
            "sub sp, sp, #32",
            "str r11, [sp]",
            "str r12, [sp, #4]",
            "str r8, [sp, #8]",
            "str lr, [sp, #12]",
            "str r0, [sp, #16]",
            "str r5, [sp, #20]",
            "str r1, [sp, #24]",
            "str r2, [sp, #28]",
            "4:",
            "ldm r5!, {{r0, r1, r2, r3}}",
            "ldr r11, [sp]",
            "ldr lr, [sp, #12]",
            // A 3x3 window (9 taps, the common case) runs unrolled; others loop below.
            "cmp lr, #9",
            "bne 5f",
            tap2!(), tap2!(), tap2!(), tap2!(), tap!(),
            "7:",
            scale2!("r0", "r1"),
            scale2!("r2", "r3"),
            "ldr r12, [sp, #8]",
            store!("r0"), store!("r1"), store!("r2"), store!("r3"),
            "str r12, [sp, #8]",
            "adds r4, r4, #4",
            "ldr r12, [sp, #4]",
            "cmp r5, r12",
            "bne 4b",
            "ldr r12, [sp, #16]",
            "subs r12, r12, #1",
            "beq 9f",
            "str r12, [sp, #16]",
            "ldr r12, [sp, #24]",
            "add r4, r4, r12",
            "ldr r12, [sp, #8]",
            "ldr r10, [sp, #28]",
            "add r12, r12, r10",
            "str r12, [sp, #8]",
            "ldr r5, [sp, #20]",
            "b 4b",
            "5:",
            tap!(),
            "subs lr, lr, #1",
            "bne 5b",
            "b 7b",
            "9:",
            "add sp, sp, #32",
            "pop {{r6, r7}}",
            inout("r11") table.as_ptr() => _,
            inout("r4") input => _,
            inout("r5") units => _,
            inout("r12") units.wrapping_add(depthwise_unit_words(table.len()) * groups) => _,
            out("r10") _,
            inout("r8") out => _,
            out("r9") _,
            inout("lr") taps => _,
            inout("r0") pixels => _, inout("r1") in_step => _, inout("r2") out_step => _, out("r3") _,
        );
    }
}

/// Portable [`depthwise_pixel`] of group `g`: its four requantized channels. `outside` marks
/// the zero-point taps.
#[cfg(not(all(target_arch = "arm", feature = "dsp")))]
fn depthwise_group(table: &[u32], outside: u32, input: &[i8], zp: i32, unit: &[u32], g: usize) -> [i8; 4] {
    use crate::dsp::smmlar;
    let (start, rest) = unit.split_at(4.min(unit.len()));
    let (weights, scale) = rest.split_at((2 * table.len()).min(rest.len()));
    let mut acc = [0i32; 4];
    for (a, &b) in acc.iter_mut().zip(start) {
        *a = b as i32;
    }
    for (&entry, w) in table.iter().zip(weights.chunks_exact(2)) {
        let q = if entry == outside { [zp as i8; 4] } else { input.get(entry as usize + 4 * g..entry as usize + 4 * g + 4).map_or([0; 4], |q| [q[0], q[1], q[2], q[3]]) };
        let x = u32::from_le_bytes(q.map(|v| v as u8));
        let (xe, xo) = (sxtb16(x), sxtb16_ror8(x));
        acc = [smlabb(xe, w[0], acc[0]), smlabb(xo, w[1], acc[1]), smlatt(xe, w[0], acc[2]), smlatt(xo, w[1], acc[3])];
    }
    let mut out = [0i8; 4];
    for (j, (o, &a)) in out.iter_mut().zip(&acc).enumerate() {
        let word = |i: usize| scale.get(6 * (j / 2) + j % 2 + i).map_or(0, |&v| v as i32);
        let (k, m, s) = (word(0), word(2), word(4));
        *o = (smmlar(a, m, k.wrapping_add(a >> 31)) >> (s & 31) >> 1).bounded(-128, 127) as i8;
    }
    out
}

/// Per output pixel: a table of its taps (one shared by every window inside the input), then
/// every group through [`depthwise_pixel`], which requantizes inline; for the layers
/// [`depthwise_conv2d_s8_fast_supported`] takes (an error otherwise).
pub fn depthwise_conv2d_s8_fast(p: &DepthwiseConv2d, input: &[i8], output: &mut [i8], scratch: &mut [u8]) -> Result<(), Error> {
    depthwise_conv2d_s8_fast_io(p, &mut Io::Apart { input, output }, scratch)
}

/// [`depthwise_conv2d_s8_fast`] on an [`Io`]: output pixels in order, each written after its
/// taps are read (channel groups are independent: group `g` reads and writes only its bytes).
pub fn depthwise_conv2d_s8_fast_io(p: &DepthwiseConv2d, io: &mut Io, scratch: &mut [u8]) -> Result<(), Error> {
    let (ih, iw, c) = (p.input.h as usize, p.input.w as usize, p.input.c as usize);
    let (oh, ow) = (p.output.h as usize, p.output.w as usize);
    let (kh, kw) = (p.kernel_h as usize, p.kernel_w as usize);
    expect_len(io.input().len(), p.input.len()?)?;
    expect_len(io.output_len(), p.output.len()?)?;
    expect_len(p.output.c as usize, c)?;
    expect_len(p.weights.len(), kh * kw * c)?;
    expect_len(p.bias.len().min(p.requant.multipliers.len()).min(p.requant.shifts.len()), c)?;
    let unsupported = Error::BadParameter { layer: 0, what: "depthwise parameters the fast kernel does not take" };
    if !depthwise_fast_shape(p) {
        return Err(unsupported);
    }
    let (taps, groups) = (depthwise_taps(p), c / 4);
    let words = depthwise_scratch_words(p);
    let all = scratch_words(scratch, words)?;
    let short = Error::BufferSize { expected: words, found: 0 };
    let (inner, rest) = all.split_at_mut_checked(taps).ok_or(short)?;
    let (table, rest) = rest.split_at_mut_checked(taps).ok_or(short)?;
    let (zeros, rest) = rest.split_at_mut_checked(groups).ok_or(short)?;
    let units = rest.get_mut(..depthwise_unit_words(taps) * groups).ok_or(short)?;
    zeros.fill(u32::from_ne_bytes([p.input_zp as u8; 4]));
    if !depthwise_prepare(p, taps, units) {
        return Err(unsupported);
    }
    let pads = (p.padding.leading(ih, kh, p.stride_h as usize, oh), p.padding.leading(iw, kw, p.stride_w as usize, ow));
    // The taps of a window inside the input, from its first tap: the table of a window at the input's corner, with 0 for "outside" (no pixel is inside
    // if a tap of that window is outside).
    depthwise_table(p, (0, 0), (0, 0), 0, inner);
    // On the M4, a run of pixels of a row whose windows are inside the input (columns
    // first_inside..=last_inside) in one call, in the order the loop takes them.
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    let (sw, reverse) = ((p.stride_w as usize).max(1), matches!(io, Io::Shared { reverse: true, .. }));
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    let (first_inside, last_inside) = (pads.1.div_ceil(sw), (iw + pads.1).saturating_sub(kw) / sw);
    let mut k = 0;
    while k < oh * ow {
        let q = io.pixel(k, oh * ow);
        let (oy, ox) = (q / ow.max(1), q % ow.max(1));
        let (y0, x0) = ((oy * p.stride_h as usize) as isize - pads.0 as isize, (ox * p.stride_w as usize) as isize - pads.1 as isize);
        let inside = y0 >= 0 && x0 >= 0 && y0 as usize + kh <= ih && x0 as usize + kw <= iw;
        // Inside: the fixed table from the window's first tap; at an edge, this pixel's table.
        let from = if inside { (y0 as usize * iw + x0 as usize) * c } else { 0 };
        #[cfg(all(target_arch = "arm", feature = "dsp"))]
        let run = {
            let (input, output) = io.pointers().ok_or(Error::BadParameter { layer: 0, what: "input or output outside its buffer" })?;
            let tab: &[u32] = if inside {
                inner
            } else {
                depthwise_table(p, (oy, ox), pads, (zeros.as_ptr() as usize).wrapping_sub(input as usize) as u32, table);
                table
            };
            // Inside, so first_inside <= ox <= last_inside: the run goes on to the end of the
            // inside columns (or back to their start) within the row.
            let run = match (inside, reverse) {
                (false, _) => 1,
                (true, false) => (last_inside + 1).min(ow).saturating_sub(ox).max(1),
                (true, true) => (ox + 1).saturating_sub(first_inside).max(1),
            };
            let (window, pixel) = if reverse { ((sw * c).wrapping_neg(), c.wrapping_neg()) } else { (sw * c, c) };
            // SAFETY: run j's window starts at from + j window (a window inside the input, or
            // the pixel's taps), whose table offsets address input pixels (shapes checked
            // above) or the zero-point words, c bytes from each; its output pixel q + j pixel
            // lies in the same row (ox + j <= min(last_inside, ow - 1), or ox - j >=
            // first_inside), c bytes in the output; `units` holds every group's unit.
            unsafe { depthwise_pixel(tab, input.add(from), units.as_ptr(), output.add(q * c), groups, (run, window.wrapping_sub(c), pixel.wrapping_sub(c))) };
            run
        };
        #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
        let run = {
            let tab: &[u32] = if inside {
                inner
            } else {
                depthwise_table(p, (oy, ox), pads, u32::MAX, table);
                table
            };
            for g in 0..groups {
                let unit = units.chunks_exact(depthwise_unit_words(taps)).nth(g).unwrap_or(&[]);
                let out = depthwise_group(tab, u32::MAX, io.input().get(from..).unwrap_or(&[]), p.input_zp, unit, g);
                for (o, v) in io.output(q * c + 4 * g, 4).iter_mut().zip(out) {
                    *o = v;
                }
            }
            1
        };
        k += run;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Add with SMMULR

/// Right shifts only (TFLM's Prepare always gives them), headroom of at most 20 bits: every
/// value reaching a multiply is below 2^29, so [`smmulr`] computes TFLM's
/// `SaturatingRoundingDoublingHighMul` exactly. The half input must exist (TFLM's Prepare always makes one: the input of the larger scale)
/// and the output's zero point fold into its nudge ([`folds_output_zp`]); other ADDs run the
/// reference kernel.
pub fn add_s8_fast_supported(p: &Add) -> bool {
    p.left_shift <= 20 && [p.input1_shift, p.input2_shift, p.output_shift].iter().all(|s| (-31..=0).contains(s)) && half_input(p).is_some() && folds_output_zp(p)
}

/// The output's zero point folded into its nudge, when that cannot overflow (|sum| < 2^29),
/// and a right shift of at least 1 (TFLM's output multiplier is about 2^-19).
fn folds_output_zp(p: &Add) -> bool {
    (-22..=-1).contains(&p.output_shift) && p.left_shift >= 1
}

/// The constants of one multiply-and-shift: multiplier, right shift, nudge, fix.
#[derive(Clone, Copy)]
struct Scale(i32, u32, i32, i32);

impl Scale {
    fn new(m: i32, shift: i32) -> Scale {
        let right = shift.wrapping_neg() as u32 & 31;
        Scale(m, right, ((1u32 << right) >> 1) as i32, if right == 0 { 0 } else { -1 })
    }

    /// `RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x, m), right)` for `|x| < 2^30`
    /// and `right` in 0..=31, with `nudge = (1 << right) >> 1` and `fix = -1` (or 0 when `right`
    /// is 0).
    #[inline(always)]
    fn apply(self, x: i32) -> i32 {
        self.apply_doubled(x << 1)
    }

    /// [`Scale::apply`] of `x2 / 2`, given the doubled value `x2` (what SMMULR multiplies).
    #[inline(always)]
    fn apply_doubled(self, x2: i32) -> i32 {
        let t = smmulr(x2, self.0);
        (t + self.2 + ((t >> 31) & self.3)) >> self.1
    }
}

/// One input's 256 scaled values, as i32.
const ADD_TABLE_BYTES: usize = 4 * 256 + 3;

pub fn add_s8_fast_scratch_bytes(_p: &Add) -> usize {
    ADD_TABLE_BYTES
}

/// Which input TFLM's Prepare brought to exactly half its value (multiplier 2^30, shift 0: the
/// one with the larger scale): its scaled value is `(x - zp) << (left_shift - 1)`.
fn half_input(p: &Add) -> Option<usize> {
    let half = |m: i32, s: i32| m == 1 << 30 && s == 0;
    if half(p.input1_multiplier, p.input1_shift) {
        Some(0)
    } else if half(p.input2_multiplier, p.input2_shift) {
        Some(1)
    } else {
        None
    }
}

/// Per element: the half input shifted, the other's scaled value from a 256-entry table built
/// once per call, their sum scaled to the output with SMMULR.
pub fn add_s8_fast(p: &Add, input1: &[i8], input2: &[i8], output: &mut [i8], scratch: &mut [u8]) -> Result<(), Error> {
    expect_len(input1.len(), p.len)?;
    expect_len(input2.len(), p.len)?;
    expect_len(output.len(), p.len)?;
    add_elements(p, input1, input2, output, scratch, true)
}

/// [`add_s8_fast`] without the length checks; `build_table`: false when an earlier call for
/// the same op left its table in `scratch`.
fn add_elements(p: &Add, input1: &[i8], input2: &[i8], output: &mut [i8], scratch: &mut [u8], build_table: bool) -> Result<(), Error> {
    let Some(h) = half_input(p).filter(|_| folds_output_zp(p)) else {
        return Err(Error::BadParameter { layer: 0, what: "ADD outside the fast kernel's range" });
    };
    // The other input's values go through the table.
    let (half, other, zh, zt, st) = if h == 0 {
        (input1, input2, p.input1_zp, p.input2_zp, Scale::new(p.input2_multiplier, p.input2_shift))
    } else {
        (input2, input1, p.input2_zp, p.input1_zp, Scale::new(p.input1_multiplier, p.input1_shift))
    };
    let (so, zo, shift) = (Scale::new(p.output_multiplier, p.output_shift), p.output_zp, p.left_shift);
    let table = scratch_words(scratch, 256)?;
    // The half input's zero point, zh << (shift - 1), comes off every table entry, and the
    // entries are doubled (the sum reaching SMMULR is 2x: below 2^30, see
    // add_s8_fast_supported), so an element costs one shift and one add before the multiply.
    let kh = zh << (shift - 1);
    if build_table {
        for (v, t) in table.iter_mut().enumerate() {
            *t = (st.apply(((v as u8 as i8) as i32 - zt) << shift) - kh).wrapping_mul(2) as u32;
        }
    }
    let out_scale = Scale(so.0, so.1, so.2 + (zo << so.1), so.3);
    add_rows(half, other, output, shift as u32, table, out_scale, (p.act_min as i32, p.act_max as i32));
    Ok(())
}

/// `out = clamp(scale_doubled((h << shift) + table[t]))` element by element (the table holds
/// twice the other input's scaled value less the half input's zero point, the output scale
/// carries its zero point in its nudge).
#[cfg(not(all(target_arch = "arm", feature = "dsp")))]
fn add_rows(half: &[i8], other: &[i8], out: &mut [i8], shift: u32, table: &[u32], so: Scale, (lo, hi): (i32, i32)) {
    for ((o, &h), &t) in out.iter_mut().zip(half).zip(other) {
        let sum = ((h as i32) << shift).wrapping_add(table[t as u8 as usize] as i32);
        *o = so.apply_doubled(sum).bounded(lo, hi) as i8;
    }
}

/// [`add_rows`] on the M4, every constant in a register: 13 instructions an element with the
/// full int8 range (SSAT), 17 with a narrower clamp (two in r6 and r7, saved here).
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[inline(always)]
fn add_rows(half: &[i8], other: &[i8], out: &mut [i8], shift: u32, table: &[u32], so: Scale, (lo, hi): (i32, i32)) {
    let n = out.len().min(half.len()).min(other.len());
    // The caller's checks (a right shift, so `fix` is -1; a whole table) make this unreachable.
    if n == 0 || table.len() < 256 || so.3 == 0 {
        return;
    }
    // SAFETY: reads `n` bytes of `half` and `other` and words of `table` at byte indices
    // 0..=255 (`table` has 256), writes `n` bytes of `out`; r6 and r7 (no operand's) are
    // restored before the end.
    unsafe {
        if lo == -128 && hi == 127 {
            core::arch::asm!(
                // Loads first (LDRB, then LDRSB and the table word pipeline behind it).
                "2:",
                "ldrb {b}, [{pt}], #1",
                "ldrsb {a}, [{ph}], #1",
                "ldr {b}, [{tab}, {b}, lsl #2]",
                "lsl {a}, {a}, {sh}",
                "add {a}, {a}, {b}",
                "smmulr {a}, {a}, {m}",
                "add {s}, {nud}, {a}",
                "add {s}, {s}, {a}, asr #31",
                "asr {a}, {s}, {rsh}",
                "ssat {a}, #8, {a}",
                "strb {a}, [{po}], #1",
                "subs {n}, {n}, #1",
                "bne 2b",
                ph = inout(reg) half.as_ptr() => _, pt = inout(reg) other.as_ptr() => _, po = inout(reg) out.as_mut_ptr() => _,
                n = inout(reg) n => _, tab = in(reg) table.as_ptr(), sh = in(reg) shift, m = in(reg) so.0, nud = in(reg) so.2, rsh = in(reg) so.1,
                a = out(reg) _, b = out(reg) _, s = out(reg) _,
                options(nostack),
            );
        } else {
            // Every operand in a named register: the allocator may otherwise give one r6 or r7.
            // r0 half, r1 other, r2 out, r3 count, r4 table, r5 shift, r8 multiplier, r9 nudge,
            // r10 right shift, r11 and r12 the element, lr the packed clamp, then the sum.
            core::arch::asm!(
                "push {{r6, r7}}",
                "sxth r6, lr",
                "asr r7, lr, #16",
                "2:",
                "ldrb r12, [r1], #1",
                "ldrsb r11, [r0], #1",
                "ldr r12, [r4, r12, lsl #2]",
                "lsl r11, r11, r5",
                "add r11, r11, r12",
                "smmulr r11, r11, r8",
                "add lr, r9, r11",
                "add lr, lr, r11, asr #31",
                "asr r11, lr, r10",
                "cmp r11, r6",
                "it lt",
                "movlt r11, r6",
                "cmp r11, r7",
                "it gt",
                "movgt r11, r7",
                "strb r11, [r2], #1",
                "subs r3, r3, #1",
                "bne 2b",
                "pop {{r6, r7}}",
                inout("r0") half.as_ptr() => _, inout("r1") other.as_ptr() => _, inout("r2") out.as_mut_ptr() => _,
                inout("r3") n => _, in("r4") table.as_ptr(), in("r5") shift, in("r8") so.0, in("r9") so.2, in("r10") so.1,
                out("r11") _, out("r12") _, inout("lr") (hi << 16) | (lo & 0xFFFF) => _,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fully connected, as the 1x1 conv of one pixel

pub fn fully_connected_s8_fast_supported(p: &FullyConnected) -> bool {
    p.layout.is_oc4() && p.input_len.is_multiple_of(4) && words(p.weights).is_some() && as_pointwise(p).is_some()
}

/// The conv kernel's patch (and int4's widened group) only: no prepared requantization, whose
/// scratch (8 bytes a channel) would cost more RAM than one pixel's requantization saves.
pub fn fully_connected_s8_fast_scratch_bytes(p: &FullyConnected) -> usize {
    let stored = p.layout.stored_taps(p.input_len);
    let wide = if p.layout == WeightLayout::Oc4Int4 { 2 * stored } else { 0 };
    4 * (patch_words(stored) + wide) + 3
}

/// A fully connected layer as the 1x1 conv of one pixel it is (same weight layouts): the conv
/// kernel sums up to [`CHANNEL_GROUPS`] groups in one loop and requantizes them in one call,
/// where a call per group of four cost AD's autoencoder a fifth of its cycles. None where the
/// sizes leave a conv's shape.
fn as_pointwise<'a>(p: &FullyConnected<'a>) -> Option<Conv2d<'a>> {
    let (input, output) = (u16::try_from(p.input_len).ok()?, u16::try_from(p.output_len).ok()?);
    Some(Conv2d {
        input: Shape::new(1, 1, input),
        output: Shape::new(1, 1, output),
        kernel_h: 1,
        kernel_w: 1,
        stride_h: 1,
        stride_w: 1,
        padding: Padding::Valid,
        input_zp: p.input_zp,
        weights: p.weights,
        layout: p.layout,
        bias: p.bias,
        requant: p.requant,
    })
}

pub fn fully_connected_s8_fast(p: &FullyConnected, input: &[i8], output: &mut [i8], scratch: &mut [u8]) -> Result<(), Error> {
    let conv = as_pointwise(p).ok_or(Error::BadParameter { layer: 0, what: "fully connected too wide for the fast kernel" })?;
    conv2d_s8_fast_io(&conv, &mut Io::Apart { input, output }, scratch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift32: a fixed stream of test words.
    fn words(mut x: u32) -> impl FnMut() -> u32 {
        move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        }
    }

    /// The any-shift requantization equals TFLM's wherever [`Fast::Any`] admits a channel: shifts
    /// -31..=30, `|acc << max(shift, 0)|` below 2^31 - 512 (2^30 - 256 without right shift).
    #[test]
    fn any_shift_requantization_is_tflms() {
        let mut next = words(0x2545_F491);
        for shift in -31..=30 {
            let limit: i64 = if shift < 0 { (1 << 31) - 512 } else { (1 << 30) - 256 };
            let limit = (limit >> shift.max(0)).max(1);
            for k in 0..10_000 {
                let m = (next() >> 1) as i32 | 1 << 30;
                // Mostly uniform, and every 16th accumulator at the limit.
                let acc = if k % 16 == 0 { (limit - 1) as i32 * if k % 32 == 0 { 1 } else { -1 } } else { (next() as i64 % limit) as i32 };
                let zp = (next() % 256) as i32 - 128;
                let (lo, hi) = if next() % 2 == 0 { (-128, 127) } else { (zp.max(-128) as i8, 127) };
                let want = crate::fixedpoint::requantize(acc, m, shift, zp, lo, hi);
                assert_eq!(requant_smmulr_any(acc, m, shift, zp, lo as i32, hi as i32), want, "acc {acc} m {m} shift {shift} zp {zp}");
                // A dead channel (multiplier 0): any accumulator, wrapped or not, gives the zero point.
                let acc = next() as i32;
                assert_eq!(requant_smmulr_any(acc, 0, shift, zp, lo as i32, hi as i32), crate::fixedpoint::requantize(acc, 0, shift, zp, lo, hi));
            }
        }
    }

    /// The M4 paired loop's Wide form (see prepared_pairs): the 64-bit product rounded to its bits
    /// 31..62 as `2 hi + bit 31 of lo + bit 30 of lo`, then the halving rounding shift, equals
    /// TFLM's for every right shift and accumulators up to Any's bound, where doubling them
    /// would overflow.
    #[test]
    fn wide_requantization_is_tflms() {
        let mut next = words(0x1B87_3593);
        let limit: i64 = (1 << 31) - 512;
        for shift in -31..=-1 {
            for k in 0..20_000 {
                let m = (next() >> 1) as i32;
                let acc = if k % 16 == 0 { (limit - 1) as i32 * if k % 32 == 0 { 1 } else { -1 } } else { (next() as i64 % limit) as i32 };
                let zp = (next() % 256) as i32 - 128;
                let product = acc as i64 * m as i64;
                let (hi, lo) = ((product >> 32) as i32, product as u32);
                let x = hi.wrapping_mul(2).wrapping_add((lo >> 31) as i32).wrapping_add(((lo << 1) >> 31) as i32);
                let halved = (((x + (x >> 31)) >> !shift) + 2 * zp + 1) >> 1;
                assert_eq!(halved.clamp(-128, 127) as i8, crate::fixedpoint::requantize(acc, m, shift, zp, -128, 127), "acc {acc} m {m} shift {shift} zp {zp}");
            }
        }
    }

    /// Which fast requantization a layer gets: Right while `2 (acc + bias)` fits, Wide for a
    /// bias near 2^30 with right shifts (a dead channel's shift does not matter), Any once a live
    /// channel shifts left or not at all, none where that channel's shifted sum could overflow.
    #[test]
    fn fast_requantization_is_chosen_by_bias_and_shifts() {
        let le = |v: [i32; 2]| {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&v[0].to_le_bytes());
            b[4..].copy_from_slice(&v[1].to_le_bytes());
            b
        };
        let choose = |bias: [i32; 2], multipliers: [i32; 2], shifts: [i32; 2]| {
            let (b, m, s) = (le(bias), le(multipliers), le(shifts));
            let r = Requant::new(I32Le::new(&m), I32Le::new(&s), 0, -128, 127);
            fast_requant(&r, I32Le::new(&b), 64)
        };
        let m = 1 << 30;
        assert!(choose([1000, -1000], [m, m], [-7, -9]) == Some(Fast::Right));
        assert!(choose([1 << 30, -(1 << 30)], [m, m], [-27, -26]) == Some(Fast::Wide));
        assert!(choose([1 << 30, 5], [m, 0], [-27, 0]) == Some(Fast::Wide));
        assert!(choose([1 << 30, 5], [m, m], [-27, 0]) == Some(Fast::Any));
        assert!(choose([5, 1 << 30], [m, m], [-27, 2]) == None);
    }

    /// The SMMULR requantization equals TFLM's on accumulators below 2^30, for every right shift.
    #[test]
    fn smmulr_requantization_is_tflms() {
        let mut x = 0x9E37_79B9u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for shift in -31..=-1 {
            for _ in 0..20_000 {
                let m = (next() >> 1) as i32;
                let acc = (next() as i32) >> 2;
                let want = crate::fixedpoint::requantize(acc, m, shift, 3, -128, 127);
                assert_eq!(requant_smmulr(acc, m, shift, 3, -128, 127), want, "acc {acc} m {m} shift {shift}");
                // The M4 requant_body's form of the same rounding (see requant_n), for any zero point.
                let zp = (next() % 256) as i32 - 128;
                let x = smmulr(acc << 1, m);
                let halved = (((x + (x >> 31)) >> !shift) + 2 * zp + 1) >> 1;
                assert_eq!(halved.clamp(-128, 127) as i8, requant_smmulr(acc, m, shift, zp, -128, 127), "acc {acc} m {m} shift {shift} zp {zp}");
            }
        }
    }
}
