//! What the device runs on: the MNIST test images (quantized as the model's input says) or the
//! int8 inputs of a `.npy` file.

use std::path::Path;

use anyhow::{anyhow, Result};
use lepton_core::data::{self, Part};
use lepton_core::lpk::arithmetic::quantize_pixel;
use lepton_nn::Model;

/// Inputs back to back, each `len` bytes, with labels when they are images of a data set.
pub struct Inputs {
    pub bytes: Vec<u8>,
    pub len: usize,
    pub labels: Option<Vec<u8>>,
}

impl Inputs {
    pub fn count(&self) -> usize {
        self.bytes.len() / self.len.max(1)
    }
}

/// `npy` (checked against the model's input shape) or the first `images` MNIST test images.
/// Without a parsed `model` (the host never parses a model it is told to skip), images are
/// quantized as the seed CNN's input is (`pixel / 255`, scale 1/255, zero point -128).
pub fn load(model: Option<&Model>, npy: Option<&Path>, images: Option<usize>) -> Result<Inputs> {
    if let Some(path) = npy {
        let x = lepton_core::npy::read_i8(path)?;
        let len = match model {
            Some(m) => {
                let s = m.input_shape();
                lepton_core::npy::check_batch(path, &x.shape, [s.h as usize, s.w as usize, s.c as usize])?;
                m.input_shape().len().map_err(|e| anyhow!("{e}"))?
            }
            None => x.shape.iter().skip(1).product(),
        };
        let mut bytes: Vec<u8> = x.values.iter().map(|&v| v as u8).collect();
        if let Some(n) = images {
            bytes.truncate(n * len);
        }
        return Ok(Inputs { bytes, len, labels: None });
    }
    let mut test = data::load_part(None, Part::Test)?;
    if let Some(n) = images {
        test = test.truncated(n);
    }
    let bytes = match model {
        Some(m) => lepton_core::eval::quantize_images(m, &test)?.into_iter().map(|v| v as u8).collect(),
        None => test.images.iter().map(|&p| quantize_pixel(p, 1.0 / 255.0, -128) as u8).collect(),
    };
    Ok(Inputs { bytes, len: test.pixels(), labels: Some(test.labels) })
}
