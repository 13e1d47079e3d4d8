//! Cycle estimates for the Cortex-M4: the executed instruction mix, recorded exactly under QEMU
//! by Lepton's TCG plugin (`cycles_plugin.c`: executions per address, split by engine step, and
//! for each block how often it was left by a jump and entered by one), priced with the Cortex-M4
//! Technical Reference Manual's timings (instructions decoded from the firmware ELF by
//! yaxpeax-arm):
//!
//! | instruction | cycles |
//! |---|---|
//! | data processing, MUL/MLA, SMLAD/SMLAL, SXTB16, other DSP ops, IT | 1 |
//! | LDR/LDRB/LDRH/LDRSB/LDRSH | 2, or 1 when entered by falling through from a single load whose destination it does not address with |
//! | STR/STRB/STRH | 1 |
//! | LDRD/STRD | 3 |
//! | LDM/STM/PUSH/POP of N registers | 1 + N |
//! | SDIV/UDIV | 12 (the worst case) |
//! | TBB/TBH | 2 |
//! | VLDR/VSTR, VMOV of two core registers | 2; VLDM/VSTM/VPUSH/VPOP of N words 1 + N |
//! | VDIV/VSQRT | 14; VMLA/VMLS/VNMLA/VNMLS/VFMA 3; other FPU ops 1 |
//! | any instruction that changes the PC (taken branch, BL, BX, POP {pc}, ...) | its cost + P, P = 2, per time it was taken; not taken: no extra |
//!
//! Zero wait-state memory: flash wait states (5 at 168 MHz on the STM32F405) and what the ART
//! accelerator hides of them are left out, as are bus contention and interrupts. Cycles are never
//! fewer than instructions.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use yaxpeax_arch::{Decoder, U8Reader};
use yaxpeax_arm::armv7::{InstDecoder, Instruction, Opcode, Operand, RegShiftStyle};

/// Pipeline refill after a taken branch.
pub const P: u64 = 2;
/// The clock `ms_at_168mhz` assumes: the STM32F405's maximum.
pub const CLOCK_HZ: f64 = 168e6;

/// What an instruction costs, decoded once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    /// Cycles for one execution, before pipelining and branches.
    pub base: u64,
    /// It can change the PC: each time it does, `P` more.
    pub redirects: bool,
    /// A single load (LDR/LDRB/LDRH/LDRSB/LDRSH) that another single load before it can pipeline
    /// with: its destination register and the registers it addresses with.
    pub load: Option<Load>,
    /// Bytes (2 or 4).
    pub len: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub dest: u8,
    pub address_regs: u16,
}

const PC: u8 = 15;

/// The cost of the Thumb instruction at the start of `bytes`, or `None` if it does not decode.
pub fn cost_of(bytes: &[u8]) -> Option<Cost> {
    let hw1 = u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?]);
    let wide = matches!(hw1 >> 11, 0b11101..=0b11111);
    if wide && bytes.len() >= 4 {
        let hw2 = u16::from_le_bytes([bytes[2], bytes[3]]);
        if let Some(base) = fpu_cost(hw1, hw2) {
            return Some(Cost {
                base,
                redirects: false,
                load: None,
                len: 4,
            });
        }
    }
    match InstDecoder::default_thumb().decode(&mut U8Reader::new(bytes)) {
        Ok(inst) => Some(Cost {
            len: if inst.wide { 4 } else { 2 },
            ..integer_cost(&inst)
        }),
        Err(_) if wide => {
            register_group_cost(hw1, u16::from_le_bytes([*bytes.get(2)?, *bytes.get(3)?]))
        }
        Err(_) => None,
    }
}

/// The T32 groups "data-processing (register)" and "multiply, multiply accumulate, long multiply
/// and divide" (first halfword 0xFA00..=0xFBFF), whose DSP members (SSUB16, SADD16, QADD8, ...)
/// yaxpeax-arm does not all decode. All take one cycle on the Cortex-M4 but SDIV/UDIV, and none
/// writes the PC.
fn register_group_cost(hw1: u16, hw2: u16) -> Option<Cost> {
    if hw1 & 0xFE00 != 0xFA00 {
        return None;
    }
    let divide = matches!(hw1 & 0xFFF0, 0xFB90 | 0xFBB0) && hw2 & 0xF0F0 == 0xF0F0;
    Some(Cost {
        base: if divide { 12 } else { 1 },
        redirects: false,
        load: None,
        len: 4,
    })
}

/// FPU instructions (coprocessors 10 and 11), classified from their encoding: yaxpeax-arm does
/// not decode them in Thumb.
fn fpu_cost(hw1: u16, hw2: u16) -> Option<u64> {
    if hw1 & 0xEC00 != 0xEC00 || !matches!((hw2 >> 8) & 0xF, 10 | 11) {
        return None;
    }
    let words = u64::from(hw2 & 0xFF);
    if hw1 & 0xFFE0 == 0xEC40 {
        return Some(2); // VMOV between two core registers and a register pair
    }
    if hw1 & 0x0E00 == 0x0C00 {
        let (pre, writeback) = (hw1 & 0x0100 != 0, hw1 & 0x0020 != 0);
        return Some(if pre && !writeback { 2 } else { 1 + words }); // VLDR/VSTR, else VLDM/VSTM/VPUSH/VPOP
    }
    if hw1 & 0x0F00 == 0x0E00 {
        if hw2 & 0x0010 != 0 {
            return Some(1); // VMOV/VMRS/VMSR with one core register
        }
        let opc1 = (hw1 >> 4) & 0b1011;
        let sqrt = opc1 == 0b1011 && hw1 & 0xF == 0b0001 && hw2 & 0x0040 != 0;
        return Some(match opc1 {
            0b1000 => 14,
            _ if sqrt => 14,
            0b0000 | 0b0001 | 0b1010 => 3,
            _ => 1,
        });
    }
    None
}

fn integer_cost(inst: &Instruction) -> Cost {
    let cost = |base: u64, redirects: bool| Cost {
        base,
        redirects,
        load: None,
        len: 0,
    };
    let dest = match inst.operands[0] {
        Operand::Reg(r) => Some(r.number()),
        _ => None,
    };
    let writes_pc = dest == Some(PC);
    match inst.opcode {
        Opcode::LDR
        | Opcode::LDRB
        | Opcode::LDRH
        | Opcode::LDRSB
        | Opcode::LDRSH
        | Opcode::LDRT
        | Opcode::LDRBT
        | Opcode::LDRHT
        | Opcode::LDRSBT
        | Opcode::LDRSHT => {
            if writes_pc {
                return cost(2, true);
            }
            let load = dest.map(|dest| Load {
                dest,
                address_regs: address_regs(&inst.operands[1]),
            });
            Cost {
                base: 2,
                redirects: false,
                load,
                len: 0,
            }
        }
        Opcode::LDREX | Opcode::LDREXB | Opcode::LDREXH => cost(2, false),
        Opcode::LDRD | Opcode::STRD | Opcode::LDREXD | Opcode::STREXD => cost(3, false),
        Opcode::LDM(..) | Opcode::STM(..) | Opcode::PUSH | Opcode::POP => {
            let list = inst
                .operands
                .iter()
                .find_map(|o| {
                    if let Operand::RegList(l) = o {
                        Some(*l)
                    } else {
                        None
                    }
                })
                .unwrap_or(0);
            let loads = !matches!(inst.opcode, Opcode::STM(..) | Opcode::PUSH);
            cost(
                1 + u64::from(list.count_ones()),
                loads && list & (1 << PC) != 0,
            )
        }
        Opcode::B | Opcode::BL | Opcode::BLX | Opcode::BX | Opcode::CBZ | Opcode::CBNZ => {
            cost(1, true)
        }
        Opcode::TBB | Opcode::TBH => cost(2, true),
        Opcode::SDIV | Opcode::UDIV => cost(12, false),
        // Compares and tests name the PC without writing it.
        Opcode::CMP | Opcode::CMN | Opcode::TST | Opcode::TEQ => cost(1, false),
        _ => cost(1, writes_pc),
    }
}

fn address_regs(operand: &Operand) -> u16 {
    let bit = |r: yaxpeax_arm::armv7::Reg| 1u16 << r.number();
    let shifted = |s: &yaxpeax_arm::armv7::RegShift| match s.into_shift() {
        RegShiftStyle::RegImm(s) => bit(s.shiftee()),
        RegShiftStyle::RegReg(s) => bit(s.shiftee()) | bit(s.shifter()),
    };
    match operand {
        Operand::RegDeref(b)
        | Operand::RegDerefPreindexOffset(b, ..)
        | Operand::RegDerefPostindexOffset(b, ..) => bit(*b),
        Operand::RegDerefPreindexReg(b, i, ..) | Operand::RegDerefPostindexReg(b, i, ..) => {
            bit(*b) | bit(*i)
        }
        Operand::RegDerefPreindexRegShift(b, s, ..)
        | Operand::RegDerefPostindexRegShift(b, s, ..) => bit(*b) | shifted(s),
        // Anything else (a literal load): assume it may depend.
        _ => u16::MAX,
    }
}

/// Per address (in one bucket): executions, jumps out of it, jumps into it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub executions: u64,
    pub jumps_out: u64,
    pub jumps_in: u64,
}

/// What the plugin recorded: `intervals` inferences; per bucket (0: outside any step; k: step
/// k - 1), per instruction address, its counts.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub intervals: u64,
    pub buckets: BTreeMap<u32, BTreeMap<u64, Counts>>,
}

impl Profile {
    pub fn parse(text: &str) -> Result<Profile> {
        let mut profile = Profile::default();
        for (n, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let bad = || format!("cycle profile line {}: {line:?}", n + 1);
            match f.as_slice() {
                ["R", k] => profile.intervals = k.parse().with_context(bad)?,
                ["O", k] => bail!("the firmware ran more than 1,024 steps in one inference ({k} past that): the cycle plugin keeps 1,024"),
                ["C", b, addr, e, out, inn] => {
                    let counts = Counts { executions: e.parse().with_context(bad)?, jumps_out: out.parse().with_context(bad)?, jumps_in: inn.parse().with_context(bad)? };
                    let addr = u64::from_str_radix(addr, 16).with_context(bad)?;
                    profile.buckets.entry(b.parse().with_context(bad)?).or_default().insert(addr, counts);
                }
                _ => bail!("{}", bad()),
            }
        }
        Ok(profile)
    }
}

/// Instructions and estimated cycles of one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Priced {
    pub instructions: u64,
    pub cycles: u64,
}

/// Every bucket priced, and every address (all buckets together).
#[derive(Clone, Debug, Default)]
pub struct Estimate {
    pub buckets: BTreeMap<u32, Priced>,
    pub addresses: BTreeMap<u64, Priced>,
}

/// Price every bucket of `profile`, reading instructions through `code(addr)` (at least 4 bytes
/// from `addr`, fewer at the end of a section). Fails on an executed address that does not decode.
pub fn price(profile: &Profile, code: impl Fn(u64) -> Option<Vec<u8>>) -> Result<Estimate> {
    let executed: HashSet<u64> = profile
        .buckets
        .values()
        .flat_map(|b| b.keys().copied())
        .collect();
    let mut decoded: BTreeMap<u64, Cost> = BTreeMap::new();
    for &addr in &executed {
        let bytes = code(addr).with_context(|| {
            format!("executed address {addr:#x} is outside the firmware's code")
        })?;
        let cost = cost_of(&bytes).with_context(|| {
            format!("the instruction at {addr:#x} ({bytes:02x?}) does not decode as Thumb")
        })?;
        decoded.insert(addr, cost);
    }
    // The instruction before `addr` in program order, if it ever ran: the one a fall-through
    // into `addr` came from (a 16-bit one at addr - 2, else a 32-bit one at addr - 4).
    let predecessor = |addr: u64| -> Option<&Cost> {
        [2u64, 4]
            .iter()
            .filter_map(|&back| addr.checked_sub(back))
            .find_map(|p| decoded.get(&p).filter(|c| c.len == addr - p))
    };
    let mut out = Estimate::default();
    for (&bucket, counts) in &profile.buckets {
        let mut priced = Priced::default();
        for (&addr, c) in counts {
            let cost = decoded[&addr];
            let mut cycles = c.executions * cost.base;
            if cost.redirects {
                cycles += P * c.jumps_out;
            }
            if let (Some(load), Some(prev)) = (cost.load, predecessor(addr).and_then(|p| p.load)) {
                if load.address_regs & (1 << prev.dest) == 0 {
                    cycles -= c.executions.saturating_sub(c.jumps_in); // pipelined: 1 instead of 2
                }
            }
            priced.instructions += c.executions;
            priced.cycles += cycles;
            let at = out.addresses.entry(addr).or_default();
            at.instructions += c.executions;
            at.cycles += cycles;
        }
        out.buckets.insert(bucket, priced);
    }
    Ok(out)
}

/// Price `profile` against the code of the ELF image `elf`.
pub fn price_elf(profile: &Profile, elf: &[u8]) -> Result<Estimate> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(elf).context("firmware is not an ELF file")?;
    let sections: Vec<(u64, &[u8])> = file
        .sections()
        .filter(|s| s.kind() == object::SectionKind::Text)
        .filter_map(|s| Some((s.address(), s.data().ok()?)))
        .collect();
    price(profile, |addr| {
        let (start, data) = sections
            .iter()
            .find(|(start, data)| *start <= addr && addr < start + data.len() as u64)?;
        let at = (addr - start) as usize;
        Some(data[at..(at + 4).min(data.len())].to_vec())
    })
}

/// The code range the plugin profiles: all executable sections of the ELF.
pub fn code_range(elf: &[u8]) -> Result<(u64, u64)> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(elf).context("firmware is not an ELF file")?;
    let text: Vec<(u64, u64)> = file
        .sections()
        .filter(|s| s.kind() == object::SectionKind::Text)
        .map(|s| (s.address(), s.address() + s.size()))
        .collect();
    ensure!(!text.is_empty(), "the firmware has no code sections");
    Ok((
        text.iter().map(|t| t.0).min().unwrap_or(0),
        text.iter().map(|t| t.1).max().unwrap_or(0),
    ))
}

/// The address of the function `name` (Thumb bit cleared).
pub fn symbol(elf: &[u8], name: &str) -> Result<u64> {
    use object::{Object, ObjectSymbol};
    let file = object::File::parse(elf).context("firmware is not an ELF file")?;
    let s = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .with_context(|| format!("the firmware has no symbol {name}"))?;
    Ok(s.address() & !1)
}

const PLUGIN_SOURCE: &str = include_str!("cycles_plugin.c");

/// The plugin, compiled once per source version with the host C compiler (`$CC` or `cc`) into
/// `dir`.
pub fn plugin(dir: &Path) -> Result<PathBuf> {
    use sha2::Digest;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let digest = hex::encode(&sha2::Sha256::digest(format!("{PLUGIN_SOURCE}{cc}").as_bytes())[..8]);
    let so = dir.join(format!("lepton-cycles-{digest}.so"));
    if so.exists() {
        return Ok(so);
    }
    std::fs::create_dir_all(dir)?;
    let work = tempfile::tempdir_in(dir)?;
    let source = work.path().join("cycles_plugin.c");
    std::fs::write(&source, PLUGIN_SOURCE)?;
    let built = work.path().join("plugin.so");
    let out = std::process::Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&built)
        .arg(&source)
        .output()
        .with_context(|| format!("running the C compiler {cc} to build the QEMU cycle plugin (set CC to use another)"))?;
    ensure!(
        out.status.success(),
        "building the QEMU cycle plugin with {cc} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&built, &so)?;
    Ok(so)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-assembled Thumb code at 0x100, one instruction per entry, and the counts each ran
    /// with: the estimate must equal the cycles counted by hand from the TRM's table.
    fn priced(code: &[(&[u8], Counts)]) -> Priced {
        let mut bytes = Vec::new();
        let mut profile = Profile {
            intervals: 1,
            ..Profile::default()
        };
        for (insn, counts) in code {
            profile
                .buckets
                .entry(1)
                .or_default()
                .insert(0x100 + bytes.len() as u64, *counts);
            bytes.extend_from_slice(insn);
        }
        let at = |addr: u64| {
            bytes
                .get((addr - 0x100) as usize..)
                .map(|b| b[..b.len().min(4)].to_vec())
        };
        price(&profile, at).unwrap().buckets[&1]
    }

    fn ran(executions: u64) -> Counts {
        Counts {
            executions,
            jumps_out: 0,
            jumps_in: 0,
        }
    }

    #[test]
    fn loads_pipeline_only_after_an_independent_load() {
        // ldr r0,[r1]; ldr r2,[r1,#4]; ldr r3,[r0]; ldr r1,[r3]: 2 + 1 + 1 + 2 (r1's address is
        // r3, the previous load's destination).
        let p = priced(&[
            (&[0x08, 0x68], ran(1)),
            (&[0x4a, 0x68], ran(1)),
            (&[0x03, 0x68], ran(1)),
            (&[0x19, 0x68], ran(1)),
        ]);
        assert_eq!(
            p,
            Priced {
                instructions: 4,
                cycles: 6
            }
        );
    }

    #[test]
    fn a_load_entered_by_a_jump_does_not_pipeline() {
        // ldr r0,[r1] (once); ldr r2,[r1,#4] run 10 times, 9 of them entered by a jump: 2 + 1 + 9 * 2.
        let entered = Counts {
            executions: 10,
            jumps_out: 0,
            jumps_in: 9,
        };
        assert_eq!(
            priced(&[(&[0x08, 0x68], ran(1)), (&[0x4a, 0x68], entered)]),
            Priced {
                instructions: 11,
                cycles: 21
            }
        );
    }

    #[test]
    fn taken_branches_cost_the_refill() {
        // A loop: adds r0,r0,r2 (1); subs r1,#1 (1); bne.n back, 10 runs, 9 taken (1 + 9 * 2);
        // bx lr taken (3).
        let back = Counts {
            executions: 10,
            jumps_out: 9,
            jumps_in: 0,
        };
        let ret = Counts {
            executions: 1,
            jumps_out: 1,
            jumps_in: 0,
        };
        let p = priced(&[
            (&[0x80, 0x18], ran(10)),
            (&[0x01, 0x39], ran(10)),
            (&[0xfc, 0xd1], back),
            (&[0x70, 0x47], ret),
        ]);
        assert_eq!(
            p,
            Priced {
                instructions: 31,
                cycles: 10 + 10 + 28 + 3
            }
        );
    }

    #[test]
    fn multiple_transfers_dsp_and_divides() {
        let ret = Counts {
            executions: 1,
            jumps_out: 1,
            jumps_in: 0,
        };
        let cases: [(&[u8], Counts, u64); 9] = [
            (&[0x30, 0xb5], ran(1), 4),              // push {r4, r5, lr}: 1 + 3
            (&[0x30, 0xbd], ret, 6),                 // pop {r4, r5, pc}: 1 + 3 + P
            (&[0x21, 0xfb, 0x02, 0x00], ran(1), 1),  // smlad r0, r1, r2, r0
            (&[0x2f, 0xfa, 0x81, 0xf0], ran(1), 1),  // sxtb16 r0, r1
            (&[0xd3, 0xfa, 0x00, 0xf3], ran(1), 1), // ssub16 r3, r3, r0 (not decoded by yaxpeax-arm)
            (&[0xd0, 0xe9, 0x00, 0x23], ran(1), 3), // ldrd r2, r3, [r0]
            (&[0x91, 0xfb, 0xf2, 0xf0], ran(1), 12), // sdiv r0, r1, r2
            (&[0x90, 0xed, 0x00, 0x0a], ran(1), 2), // vldr s0, [r0]
            (&[0x80, 0xee, 0x20, 0x0a], ran(1), 14), // vdiv.f32 s0, s0, s1
        ];
        for (insn, counts, cycles) in cases {
            assert_eq!(priced(&[(insn, counts)]).cycles, cycles, "{insn:02x?}");
        }
    }

    #[test]
    fn stores_cost_one_and_do_not_feed_load_pipelining() {
        // str r0,[r1]; ldr r2,[r1]: 1 + 2.
        assert_eq!(
            priced(&[(&[0x08, 0x60], ran(1)), (&[0x0a, 0x68], ran(1))]).cycles,
            3
        );
    }

    #[test]
    fn profiles_parse_and_reject_overflow() {
        let p = Profile::parse("R 2\nC 0 8000100 5 1 0\nC 3 8000102 7 0 2\n").unwrap();
        assert_eq!(p.intervals, 2);
        assert_eq!(
            p.buckets[&3][&0x8000102],
            Counts {
                executions: 7,
                jumps_out: 0,
                jumps_in: 2
            }
        );
        assert!(Profile::parse("R 1\nO 3\n").is_err());
        assert!(Profile::parse("C 0 zz 1 1 1\n").is_err());
    }
}
