//! The Cortex-M4 DSP instructions the optimized kernels are built on, through stable
//! `core::arch::asm!` on the device and bit-exact portable Rust everywhere else, so the host
//! runs (and tests) exactly the same kernel code.

/// Pack two i16 into a word: `lo` in bits 0..16, `hi` in bits 16..32.
#[inline(always)]
pub fn pack16(lo: i32, hi: i32) -> u32 {
    (lo as u16 as u32) | ((hi as u16 as u32) << 16)
}

/// `SMLAD acc, a, b`: `acc + a.lo * b.lo + a.hi * b.hi` (signed 16x16 products).
#[inline(always)]
pub fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    {
        let out: i32;
        // SAFETY: pure register arithmetic. Not `preserves_flags`: SMLAD may set Q.
        unsafe { core::arch::asm!("smlad {o}, {a}, {b}, {c}", o = lateout(reg) out, a = in(reg) a, b = in(reg) b, c = in(reg) acc, options(pure, nomem, nostack)) };
        out
    }
    #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
    {
        let (al, ah) = (a as u16 as i16 as i32, (a >> 16) as u16 as i16 as i32);
        let (bl, bh) = (b as u16 as i16 as i32, (b >> 16) as u16 as i16 as i32);
        acc.wrapping_add(al * bl).wrapping_add(ah * bh)
    }
}

/// `SMLABB acc, a, b`: `acc + a.lo * b.lo` (signed 16x16).
#[inline(always)]
pub fn smlabb(a: u32, b: u32, acc: i32) -> i32 {
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    {
        let out: i32;
        // SAFETY: pure register arithmetic. Not `preserves_flags`: SMLABB may set Q.
        unsafe { core::arch::asm!("smlabb {o}, {a}, {b}, {c}", o = lateout(reg) out, a = in(reg) a, b = in(reg) b, c = in(reg) acc, options(pure, nomem, nostack)) };
        out
    }
    #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
    {
        acc.wrapping_add(a as u16 as i16 as i32 * b as u16 as i16 as i32)
    }
}

/// `SMLATT acc, a, b`: `acc + a.hi * b.hi` (signed 16x16).
#[inline(always)]
pub fn smlatt(a: u32, b: u32, acc: i32) -> i32 {
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    {
        let out: i32;
        // SAFETY: pure register arithmetic. Not `preserves_flags`: SMLATT may set Q.
        unsafe { core::arch::asm!("smlatt {o}, {a}, {b}, {c}", o = lateout(reg) out, a = in(reg) a, b = in(reg) b, c = in(reg) acc, options(pure, nomem, nostack)) };
        out
    }
    #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
    {
        acc.wrapping_add((a >> 16) as u16 as i16 as i32 * (b >> 16) as u16 as i16 as i32)
    }
}

/// `SMMULR a, b`: the high word of `a * b`, rounded: `(a * b + 2^31) >> 32`.
#[inline(always)]
pub fn smmulr(a: i32, b: i32) -> i32 {
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    {
        let out: i32;
        // SAFETY: pure register arithmetic.
        unsafe { core::arch::asm!("smmulr {o}, {a}, {b}", o = lateout(reg) out, a = in(reg) a, b = in(reg) b, options(pure, nomem, nostack, preserves_flags)) };
        out
    }
    #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
    {
        ((a as i64 * b as i64 + (1i64 << 31)) >> 32) as i32
    }
}

/// `SMMLAR acc, a, b`: the high word of `acc * 2^32 + a * b`, rounded:
/// `(acc * 2^32 + a * b + 2^31) >> 32` (modulo 2^32, as the instruction wraps).
#[inline(always)]
pub fn smmlar(a: i32, b: i32, acc: i32) -> i32 {
    (((acc as i64) << 32).wrapping_add(a as i64 * b as i64).wrapping_add(1i64 << 31) >> 32) as i32
}

/// `SXTB16 x`: bytes 0 and 2 of `x`, sign-extended into the low and high halfwords.
#[inline(always)]
pub fn sxtb16(x: u32) -> u32 {
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    {
        let out: u32;
        // SAFETY: pure register arithmetic.
        unsafe { core::arch::asm!("sxtb16 {o}, {x}", o = lateout(reg) out, x = in(reg) x, options(pure, nomem, nostack, preserves_flags)) };
        out
    }
    #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
    {
        pack16(x as u8 as i8 as i32, (x >> 16) as u8 as i8 as i32)
    }
}

/// `SXTB16 x, ROR #8`: bytes 1 and 3 of `x`, sign-extended into the low and high halfwords.
#[inline(always)]
pub fn sxtb16_ror8(x: u32) -> u32 {
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    {
        let out: u32;
        // SAFETY: pure register arithmetic.
        unsafe { core::arch::asm!("sxtb16 {o}, {x}, ror #8", o = lateout(reg) out, x = in(reg) x, options(pure, nomem, nostack, preserves_flags)) };
        out
    }
    #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
    {
        pack16((x >> 8) as u8 as i8 as i32, (x >> 24) as u8 as i8 as i32)
    }
}

/// `SXTAB16 a, x`: bytes 0 and 2 of `x`, sign-extended, plus the halfwords of `a` (wrapping).
#[inline(always)]
pub fn sxtab16(a: u32, x: u32) -> u32 {
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    {
        let out: u32;
        // SAFETY: pure register arithmetic.
        unsafe { core::arch::asm!("sxtab16 {o}, {a}, {x}", o = lateout(reg) out, a = in(reg) a, x = in(reg) x, options(pure, nomem, nostack, preserves_flags)) };
        out
    }
    #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
    {
        sadd16(a, sxtb16(x))
    }
}

/// `SXTAB16 a, x, ROR #8`: bytes 1 and 3 of `x`, sign-extended, plus the halfwords of `a`.
#[inline(always)]
pub fn sxtab16_ror8(a: u32, x: u32) -> u32 {
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    {
        let out: u32;
        // SAFETY: pure register arithmetic.
        unsafe { core::arch::asm!("sxtab16 {o}, {a}, {x}, ror #8", o = lateout(reg) out, a = in(reg) a, x = in(reg) x, options(pure, nomem, nostack, preserves_flags)) };
        out
    }
    #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
    {
        sadd16(a, sxtb16_ror8(x))
    }
}

/// `SADD16 a, b`: halfword-wise `a + b` (wrapping).
#[inline(always)]
pub fn sadd16(a: u32, b: u32) -> u32 {
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    {
        let out: u32;
        // SAFETY: pure register arithmetic. SADD16 sets the GE flags, not the condition flags.
        unsafe { core::arch::asm!("sadd16 {o}, {a}, {b}", o = lateout(reg) out, a = in(reg) a, b = in(reg) b, options(pure, nomem, nostack)) };
        out
    }
    #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
    {
        let lo = (a as u16 as i16).wrapping_add(b as u16 as i16);
        let hi = ((a >> 16) as u16 as i16).wrapping_add((b >> 16) as u16 as i16);
        pack16(lo as i32, hi as i32)
    }
}

/// `SSUB16 a, b`: halfword-wise `a - b` (wrapping).
#[inline(always)]
pub fn ssub16(a: u32, b: u32) -> u32 {
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    {
        let out: u32;
        // SAFETY: pure register arithmetic. SSUB16 sets the GE flags, not the condition flags.
        unsafe { core::arch::asm!("ssub16 {o}, {a}, {b}", o = lateout(reg) out, a = in(reg) a, b = in(reg) b, options(pure, nomem, nostack)) };
        out
    }
    #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
    {
        let lo = (a as u16 as i16).wrapping_sub(b as u16 as i16);
        let hi = ((a >> 16) as u16 as i16).wrapping_sub((b >> 16) as u16 as i16);
        pack16(lo as i32, hi as i32)
    }
}

/// Four int8 inputs `x0..x3` (one little-endian word) plus an offset (TFLM's input offset,
/// minus the zero point; `offset_pair` holds it in both halfwords), as the two i16 pairs SMLAD
/// consumes against [`sxtb16`] / [`sxtb16_ror8`] of a weight word: `(x0, x2)`, `(x1, x3)`. One
/// SXTAB16 each: the offset is added as the bytes are extended.
#[inline(always)]
pub fn widen_quad(word: u32, offset_pair: u32) -> (u32, u32) {
    (sxtab16(offset_pair, word), sxtab16_ror8(offset_pair, word))
}

/// The input offset `-zp` in both halfwords, as [`widen_quad`] takes it.
#[inline(always)]
pub fn offset_pair(zp: i32) -> u32 {
    pack16(zp.wrapping_neg(), zp.wrapping_neg())
}

/// `dst` filled with `value`. Out of line, and on the M4 a loop of STR in assembly: LLVM turns
/// a fill in Rust into a `memset` call, which would link `memset` into the inference code.
#[inline(never)]
pub fn fill_words(dst: &mut [u32], value: u32) {
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    if !dst.is_empty() {
        // SAFETY: writes the len words of `dst`.
        unsafe {
            core::arch::asm!(
                "2:",
                "str {v}, [{p}], #4",
                "subs {n}, {n}, #1",
                "bne 2b",
                p = inout(reg) dst.as_mut_ptr() => _, n = inout(reg) dst.len() => _, v = in(reg) value,
                options(nostack),
            );
        }
    }
    #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
    dst.fill(value);
}

/// `dst` filled with `value` ([`fill_words`] for bytes).
#[inline(never)]
pub fn fill_bytes(dst: &mut [i8], value: i8) {
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    if !dst.is_empty() {
        // SAFETY: writes the len bytes of `dst`.
        unsafe {
            core::arch::asm!(
                "2:",
                "strb {v}, [{p}], #1",
                "subs {n}, {n}, #1",
                "bne 2b",
                p = inout(reg) dst.as_mut_ptr() => _, n = inout(reg) dst.len() => _, v = in(reg) value as u32,
                options(nostack),
            );
        }
    }
    #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
    dst.fill(value);
}

/// The first bytes of `src` over `dst` (as many as both have): [`copy_rows`] of one row, out of
/// line (not `memcpy`, see [`fill_words`]).
#[inline(never)]
pub fn copy_bytes(dst: &mut [i8], src: &[i8]) {
    let n = dst.len().min(src.len());
    // SAFETY: n bytes of `src` are read and n bytes of `dst` written, distinct slices.
    unsafe { copy_rows(dst.as_mut_ptr() as *mut u8, src.as_ptr(), n, (0, 0), 1) }
}

/// `rows` runs of `n` bytes, the first from `src` to `at`, each next `src_pitch` bytes on in
/// the source and `at_pitch` on in the destination: a window's in-bounds taps, row by row. On
/// the M4 a word at a time (it loads and stores unaligned words) in assembly: LLVM turns the
/// same loop in Rust into `memcpy` calls, whose call and size dispatch cost more than a row of
/// a few words.
///
/// # Safety
/// For every `r < rows`, `src + r src_pitch..+ n` is readable, `at + r at_pitch..+ n` writable,
/// and no two of these ranges overlap.
#[inline(always)]
pub(crate) unsafe fn copy_rows(at: *mut u8, src: *const i8, n: usize, (src_pitch, at_pitch): (usize, usize), rows: usize) {
    #[cfg(all(target_arch = "arm", feature = "dsp"))]
    // SAFETY: per row reads src..src + n and writes at..at + n (the caller's guarantee): n / 4
    // words, then n % 4 bytes.
    unsafe {
        if rows == 0 {
            return;
        }
        core::arch::asm!(
            "1:",
            "mov {d}, {at}",
            "mov {s}, {src}",
            "subs {k}, {n}, #4",
            "blo 3f",
            "2:",
            "ldr {t}, [{s}], #4",
            "subs {k}, {k}, #4",
            "str {t}, [{d}], #4",
            "bhs 2b",
            "3:",
            "adds {k}, {k}, #4",
            "beq 5f",
            "4:",
            "ldrb {t}, [{s}], #1",
            "subs {k}, {k}, #1",
            "strb {t}, [{d}], #1",
            "bne 4b",
            "5:",
            "add {at}, {at}, {ap}",
            "add {src}, {src}, {sp_}",
            "subs {rows}, {rows}, #1",
            "bne 1b",
            at = inout(reg) at => _,
            src = inout(reg) src => _,
            n = in(reg) n,
            ap = in(reg) at_pitch,
            sp_ = in(reg) src_pitch,
            rows = inout(reg) rows => _,
            d = out(reg) _,
            s = out(reg) _,
            k = out(reg) _,
            t = out(reg) _,
            options(nostack),
        );
    };
    #[cfg(not(all(target_arch = "arm", feature = "dsp")))]
    // SAFETY: the caller's guarantee.
    unsafe {
        for r in 0..rows {
            core::ptr::copy_nonoverlapping(src.wrapping_add(r * src_pitch) as *const u8, at.wrapping_add(r * at_pitch), n);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_semantics() {
        assert_eq!(smlad(pack16(-3, 4), pack16(5, -6), 10), 10 - 15 - 24);
        assert_eq!(sxtb16(0x80_11_7F_22), pack16(0x22, 0x11));
        assert_eq!(sxtb16(0x01_80_02_FF), pack16(-1, -128));
        assert_eq!(sxtb16_ror8(0x80_11_7F_22), pack16(0x7F, -128));
        assert_eq!(ssub16(pack16(-128, 127), pack16(127, -128)), pack16(-255, 255));
        assert_eq!(smmulr(1 << 30, 1 << 30), 1 << 28);
        assert_eq!(smlabb(pack16(-3, 100), pack16(5, 100), 1), -14);
        assert_eq!(smlatt(pack16(100, -3), pack16(100, 5), 1), -14);
        assert_eq!(smmulr(-3, 1 << 30), -1); // (-3 * 2^30 + 2^31) >> 32 = floor(-0.25)
        assert_eq!(smmulr(3, i32::MAX), 1); // (3 * (2^31 - 1) + 2^31) >> 32 = floor(1.99..)
        assert_eq!(smmlar(3, i32::MAX, 5), 6);
        assert_eq!(smmlar(-3, 1 << 30, -7), -8);
        assert_eq!(smmlar(i32::MIN, i32::MIN, i32::MAX), -(1 << 30) - 1); // 0xBFFF_FFFF: the sum wraps past 2^63
        let (a, b) = widen_quad(u32::from_le_bytes([1, 2, 3, 0x80]), offset_pair(-128));
        assert_eq!((a, b), (pack16(129, 131), pack16(130, 0)));
        assert_eq!(sxtab16(pack16(-1, 128), 0x80_11_7F_22), pack16(0x21, 0x91));
        assert_eq!(sxtab16_ror8(pack16(-1, 128), 0x80_11_7F_22), pack16(0x7E, 0));
    }
}
