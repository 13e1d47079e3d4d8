//! QEMU: images from a host file, results to another, both over semihosting. The paths come from
//! the command line (`-append "IMAGES RESULTS"`); the exit code becomes QEMU's exit status.
//!
//! Results file: `"LPRS"`, layer count (u8), then per image: class (u8), logits count (u8),
//! the logits, instructions (u32 LE), one u32 per layer; then `"DONE"`, stack peak, arena bytes,
//! model bytes (u32 LE each).

use semihosting::experimental::env;
use semihosting::fs::File;
use semihosting::io::{Read, Write};

use crate::{exit, Prediction};

pub struct Link {
    images: File,
    results: File,
}

fn cpath(arg: &str, buf: &mut heapless::Vec<u8, 256>) -> Result<(), i32> {
    buf.clear();
    buf.extend_from_slice(arg.as_bytes()).map_err(|_| exit::USAGE)?;
    buf.push(0).map_err(|_| exit::USAGE)?;
    Ok(())
}

impl Link {
    pub fn open(layers: usize) -> Result<Link, i32> {
        let args = env::args::<512>().map_err(|_| exit::USAGE)?;
        let mut args = args.skip(1); // argv[0] is the kernel
        let (Some(Ok(images)), Some(Ok(results))) = (args.next(), args.next()) else {
            defmt::error!("usage: -append \"IMAGES_FILE RESULTS_FILE\"");
            return Err(exit::USAGE);
        };
        let mut path = heapless::Vec::new();
        cpath(images, &mut path)?;
        let c = core::ffi::CStr::from_bytes_with_nul(&path).map_err(|_| exit::USAGE)?;
        let images = File::open(c).map_err(|_| {
            defmt::error!("cannot open the images file");
            exit::IO
        })?;
        cpath(results, &mut path)?;
        let c = core::ffi::CStr::from_bytes_with_nul(&path).map_err(|_| exit::USAGE)?;
        let mut results = File::create(c).map_err(|_| {
            defmt::error!("cannot create the results file");
            exit::IO
        })?;
        results.write_all(b"LPRS").map_err(|_| exit::IO)?;
        results.write_all(&[layers as u8]).map_err(|_| exit::IO)?;
        Ok(Link { images, results })
    }

    /// `Ok(false)` at the end of the images file.
    pub fn read_image(&mut self, pixels: &mut [u8]) -> Result<bool, i32> {
        let mut filled = 0;
        while filled < pixels.len() {
            match self.images.read(&mut pixels[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    defmt::error!("images file ends inside an image");
                    return Err(exit::IO);
                }
                Ok(n) => filled += n,
                Err(_) => return Err(exit::IO),
            }
        }
        Ok(true)
    }

    pub fn write_result(&mut self, p: &Prediction) -> Result<(), i32> {
        let mut record: heapless::Vec<u8, 128> = heapless::Vec::new();
        let _ = record.push(p.class);
        let _ = record.push(p.logits.len() as u8);
        let _ = record.extend_from_slice(lepton_nn::types::as_u8(p.logits));
        let _ = record.extend_from_slice(&p.instructions.to_le_bytes());
        for n in p.per_layer {
            let _ = record.extend_from_slice(&n.to_le_bytes());
        }
        self.results.write_all(&record).map_err(|_| exit::IO)
    }

    pub fn write_summary(&mut self, stack_peak: u32, arena: u32, model: u32) -> Result<(), i32> {
        let mut s = [0u8; 16];
        s[0..4].copy_from_slice(b"DONE");
        s[4..8].copy_from_slice(&stack_peak.to_le_bytes());
        s[8..12].copy_from_slice(&arena.to_le_bytes());
        s[12..16].copy_from_slice(&model.to_le_bytes());
        self.results.write_all(&s).map_err(|_| exit::IO)
    }
}

pub fn finish(code: i32) -> ! {
    semihosting::process::exit(code)
}
