//! Instruction counting with TIM2. Under QEMU with `-icount shift=0`, TIM2 at prescaler 0 advances
//! exactly once per executed instruction; on a real board it counts timer clocks (cycles at
//! the APB1 timer clock).

const RCC_APB1ENR: *mut u32 = 0x4002_3840 as *mut u32;
const TIM2_CR1: *mut u32 = 0x4000_0000 as *mut u32;
const TIM2_EGR: *mut u32 = 0x4000_0014 as *mut u32;
const TIM2_CNT: *const u32 = 0x4000_0024 as *const u32;
const TIM2_PSC: *mut u32 = 0x4000_0028 as *mut u32;
const TIM2_ARR: *mut u32 = 0x4000_002C as *mut u32;

/// Start TIM2 free-running over its full 32-bit range.
pub fn start() {
    // SAFETY: fixed STM32F405 register addresses; TIM2 is used by nothing else.
    unsafe {
        RCC_APB1ENR.write_volatile(RCC_APB1ENR.read_volatile() | 1); // TIM2EN
        TIM2_PSC.write_volatile(0);
        TIM2_ARR.write_volatile(u32::MAX);
        TIM2_EGR.write_volatile(1); // load PSC/ARR now
        TIM2_CR1.write_volatile(1); // CEN
    }
}

#[inline(always)]
pub fn now() -> u32 {
    // SAFETY: read-only access to the running counter.
    unsafe { TIM2_CNT.read_volatile() }
}

/// Marker for external instruction counters (`qemu-icount`): called right before one inference.
#[no_mangle]
#[inline(never)]
pub extern "C" fn icount_start() {
    // Distinct bodies keep the optimizer from folding the two markers into one address.
    // SAFETY: a no-op instruction.
    unsafe { core::arch::asm!("nop", options(nomem, nostack, preserves_flags)) };
}

/// Marker called right after the inference that `icount_start` opened.
#[no_mangle]
#[inline(never)]
pub extern "C" fn icount_stop() {
    // SAFETY: no-op instructions.
    unsafe { core::arch::asm!("nop", "nop", options(nomem, nostack, preserves_flags)) };
}

/// Marker called before each engine step: the cycle plugin of `cargo xtask bench` charges what
/// runs from here to [`icount_step_end`] to that step.
#[no_mangle]
#[inline(never)]
pub extern "C" fn icount_step_begin() {
    // SAFETY: no-op instructions.
    unsafe { core::arch::asm!("nop", "nop", "nop", options(nomem, nostack, preserves_flags)) };
}

/// Marker called after each engine step.
#[no_mangle]
#[inline(never)]
pub extern "C" fn icount_step_end() {
    // SAFETY: no-op instructions.
    unsafe { core::arch::asm!("nop", "nop", "nop", "nop", options(nomem, nostack, preserves_flags)) };
}

/// Keeps the markers (and their symbols) in the image for external tools.
#[used]
static MARKERS: [extern "C" fn(); 4] = [icount_start, icount_stop, icount_step_begin, icount_step_end];
