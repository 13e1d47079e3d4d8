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

/// The flash region of `chip` that holds `[address, address + len)`, or why not.
pub fn check_fits(chip: &str, address: u64, len: usize) -> Result<std::ops::Range<u64>> {
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
    let Some(region) = flash.iter().find(|r| r.contains(&address)).cloned() else {
        let list: Vec<String> = flash.iter().map(|r| format!("{:#010x}..{:#010x}", r.start, r.end)).collect();
        bail!("address {address:#010x} is not in {chip}'s flash ({})", list.join(", "));
    };
    let end = address.checked_add(len as u64).context("address overflow")?;
    if end > region.end {
        bail!(
            "the model ({len} bytes) does not fit at {address:#010x}: {chip}'s flash ends at {:#010x}, {} bytes short",
            region.end,
            end - region.end
        );
    }
    Ok(region)
}

/// Validate `model`, check the chip, then write it with the first attached probe.
pub fn flash(chip: &str, address: u64, model: &[u8]) -> Result<()> {
    lepton_nn::Model::parse(model).map_err(|e| anyhow!("refusing to flash an invalid model: {e}"))?;
    check_fits(chip, address, model.len())?;
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
        let region = check_fits(DEFAULT_CHIP, DEFAULT_ADDRESS, 96_904).unwrap();
        assert_eq!(region, 0x0800_0000..0x0810_0000);
    }

    #[test]
    fn unknown_chip() {
        let e = check_fits("STM32F999ZZ", DEFAULT_ADDRESS, 100).unwrap_err();
        assert!(e.to_string().contains("unknown chip"), "{e}");
    }

    #[test]
    fn address_outside_flash() {
        let e = check_fits(DEFAULT_CHIP, 0x2000_0000, 100).unwrap_err();
        assert!(e.to_string().contains("is not in STM32F405RGTx's flash"), "{e}");
    }

    #[test]
    fn model_too_large() {
        let e = check_fits(DEFAULT_CHIP, 0x080F_0000, 96_904).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(parse_address("0x08040000").unwrap(), 0x0804_0000);
        assert_eq!(parse_address("134479872").unwrap(), 0x0804_0000);
        assert!(parse_address("zz").is_err());
    }
}
