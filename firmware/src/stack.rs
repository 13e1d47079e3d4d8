//! Stack high-water mark by painting: fill the unused stack with a pattern at boot, later find
//! the lowest word that changed.

const PAINT: u32 = 0xCCCC_CCCC;
/// Bytes below the current stack pointer left alone while painting (the painter's own frame).
const MARGIN: usize = 64;

extern "C" {
    static _stack_start: u32;
}

/// The lowest address the stack may reach: with flip-link the stack sits at the bottom of RAM.
const STACK_FLOOR: usize = 0x2000_0000;

fn top() -> usize {
    // SAFETY: only the address of the linker symbol is taken.
    unsafe { &_stack_start as *const u32 as usize }
}

/// Paint the free stack. Call first thing in `main`.
pub fn paint() {
    let sp = cortex_m::register::msp::read() as usize;
    let mut p = STACK_FLOOR;
    while p + 4 <= sp - MARGIN {
        // SAFETY: [STACK_FLOOR, sp - MARGIN) is stack memory not in use yet.
        unsafe { (p as *mut u32).write_volatile(PAINT) };
        p += 4;
    }
}

/// Deepest stack use since `paint`, in bytes.
pub fn peak_bytes() -> usize {
    let mut p = STACK_FLOOR;
    // SAFETY: reading stack memory below the stack pointer.
    while p < top() && unsafe { (p as *const u32).read_volatile() } == PAINT {
        p += 4;
    }
    top() - p
}
