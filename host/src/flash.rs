//! `lepton flash`: write a model into a board's model partition with the probe-rs library, after
//! checking, against probe-rs's own target database, that the chip exists and that the model fits
//! in its flash at that address.

use anyhow::{anyhow, bail, Context, Result};
use probe_rs::config::{MemoryRegion, Registry};
use probe_rs::flashing::DownloadOptions;
use probe_rs::probe::list::Lister;
use probe_rs::{Permissions, Session, SessionConfig};

pub const DEFAULT_CHIP: &str = "STM32F405RGTx";
/// The firmware's model partition (`lepton_nn::protocol`).
pub const DEFAULT_ADDRESS: u64 = lepton_nn::protocol::MODEL_PARTITION_ADDRESS as u64;

/// Where the firmware looks for its model: `lepton_nn::protocol`'s partition.
pub const PARTITION: std::ops::Range<u64> = DEFAULT_ADDRESS..DEFAULT_ADDRESS + lepton_nn::protocol::MODEL_PARTITION_BYTES as u64;

/// The main flash region of `chip` that holds `[address, address + len)`, or why not. Without
/// `force` the bytes must lie in the firmware's model partition (nothing else is ever
/// overwritten: not the firmware's own sectors); with it, anywhere in the main flash. Never in a
/// small NVM region (one-time programmable bytes, option bytes).
pub fn check_fits(chip: &str, address: u64, len: usize, force: bool) -> Result<std::ops::Range<u64>> {
    let registry = Registry::from_builtin_families();
    let target = registry.get_target_by_name(chip).map_err(|e| {
        anyhow!("unknown chip {chip:?} ({e}); names are probe-rs target names, e.g. {DEFAULT_CHIP} (`probe-rs chip list`)")
    })?;
    let flash: Vec<_> = target
        .memory_map
        .iter()
        .filter_map(|r| match r {
            MemoryRegion::Nvm(n) if !n.is_alias => Some(n.range.clone()),
            _ => None,
        })
        .collect();
    let main = flash.iter().max_by_key(|r| r.end - r.start).cloned().context("the chip has no flash")?;
    let end = address.checked_add(len as u64).context("address overflow")?;
    if !main.contains(&address) {
        let small = flash.iter().any(|r| r.contains(&address));
        let what = if small { "a small NVM region (one-time programmable or option bytes), never written by lepton" } else { "not in its flash" };
        bail!("address {address:#010x} is {what}; {chip}'s main flash is {:#010x}..{:#010x}", main.start, main.end);
    }
    if end > main.end {
        bail!("the model ({len} bytes) does not fit at {address:#010x}: {chip}'s flash ends at {:#010x}, {} bytes short", main.end, end - main.end);
    }
    if !force && (address < PARTITION.start || end > PARTITION.end) {
        bail!(
            "{address:#010x}..{end:#010x} is outside the firmware's model partition {:#010x}..{:#010x} (below it lies the firmware itself); pass --force-address to write there anyway",
            PARTITION.start,
            PARTITION.end
        );
    }
    Ok(main)
}

/// Validate `model`, check the chip, then write it with the first attached probe.
pub fn flash(chip: &str, address: u64, model: &[u8], force: bool) -> Result<()> {
    lepton_nn::Model::parse(model).map_err(|e| anyhow!("refusing to flash an invalid model: {e}"))?;
    check_fits(chip, address, model.len(), force)?;
    let probes = Lister::new().list_all();
    if probes.is_empty() {
        bail!("no debug probe attached: connect an ST-Link (or any probe-rs probe) to the board, check USB permissions (udev rules), and retry");
    }
    eprintln!("flashing {} bytes to {chip} at {address:#010x} with {}", model.len(), probes[0].identifier);
    let mut session = Session::auto_attach(chip, SessionConfig { permissions: Permissions::default(), ..Default::default() })
        .with_context(|| format!("attaching to {chip}"))?;
    let mut loader = session.target().flash_loader();
    loader.add_data(address, model).context("preparing the flash write")?;
    loader.commit(&mut session, DownloadOptions::default()).context("writing flash")?;
    eprintln!("done: the firmware will find the model at {address:#010x} on its next reset");
    Ok(())
}

/// Parse `0x...` or decimal.
pub fn parse_address(s: &str) -> Result<u64> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => s.replace('_', "").parse(),
    };
    parsed.map_err(|_| anyhow!("invalid address {s:?} (use hex like 0x08040000 or decimal)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_partition_fits_the_mnist_model() {
        let region = check_fits(DEFAULT_CHIP, DEFAULT_ADDRESS, 96_904, false).unwrap();
        assert_eq!(region, 0x0800_0000..0x0810_0000);
    }

    #[test]
    fn unknown_chip() {
        let e = check_fits("STM32F999ZZ", DEFAULT_ADDRESS, 100, false).unwrap_err();
        assert!(e.to_string().contains("unknown chip"), "{e}");
    }

    #[test]
    fn address_outside_flash() {
        let e = check_fits(DEFAULT_CHIP, 0x2000_0000, 100, true).unwrap_err();
        assert!(e.to_string().contains("not in its flash"), "{e}");
    }

    #[test]
    fn model_too_large() {
        let e = check_fits(DEFAULT_CHIP, 0x080F_0000, 96_904, true).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        // Past the partition's end without --force-address.
        let e = check_fits(DEFAULT_CHIP, 0x080F_0000, 96_904, false).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        let e = check_fits(DEFAULT_CHIP, PARTITION.start - 100, 200, false).unwrap_err();
        assert!(e.to_string().contains("outside the firmware's model partition"), "{e}");
    }

    #[test]
    fn the_firmware_sectors_need_force() {
        let e = check_fits(DEFAULT_CHIP, 0x0800_0000, 1000, false).unwrap_err();
        assert!(e.to_string().contains("--force-address"), "{e}");
        assert!(check_fits(DEFAULT_CHIP, 0x0800_0000, 1000, true).is_ok());
    }

    #[test]
    fn one_time_programmable_bytes_are_never_written() {
        let e = check_fits(DEFAULT_CHIP, 0x1FFF_7800, 16, true).unwrap_err();
        assert!(e.to_string().contains("never written"), "{e}");
        // The option bytes are not in probe-rs's flash map at all.
        let e = check_fits(DEFAULT_CHIP, 0x1FFF_C000, 16, true).unwrap_err();
        assert!(e.to_string().contains("not in its flash"), "{e}");
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(parse_address("0x08040000").unwrap(), 0x0804_0000);
        assert_eq!(parse_address("134479872").unwrap(), 0x0804_0000);
        assert!(parse_address("zz").is_err());
    }
}
