//! `lepton train --arch SPEC`: a sequential CNN described in a file (JSON or TOML), checked
//! against the data set's input shape before any training. The architecture is saved beside the
//! model as `arch.json` and read back by `quantize`, `export-onnx`, `eval` and `report`.
//!
//! ```json
//! { "name": "tiny", "layers": [
//!     { "type": "conv", "channels": 8, "kernel": 3, "activation": "relu" },
//!     { "type": "max_pool", "size": 2 },
//!     { "type": "depthwise", "kernel": 3, "padding": "same", "activation": "relu6" },
//!     { "type": "global_avg_pool" },
//!     { "type": "dense", "units": 10 } ] }
//! ```
//!
//! Layer types: `conv` (channels, kernel, stride 1, padding valid|same), `depthwise` (kernel,
//! stride, padding, multiplier 1), `max_pool` / `avg_pool` (size, stride = size; valid),
//! `global_avg_pool`, `flatten`, `dense` (units), and `relu` / `relu6`, which fuse into the conv,
//! depthwise or dense before them. `activation` is `none` (the default, as in Keras), `relu` or
//! `relu6`. The last layer must give one value per class.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use lepton_nn::Padding;
use serde::{Deserialize, Serialize};

/// The file beside `model.bpk` that holds the architecture.
pub const ARCH_FILE: &str = "arch.json";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    None,
    Relu,
    Relu6,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaddingSpec {
    #[default]
    Valid,
    Same,
}

impl PaddingSpec {
    pub fn padding(self) -> Padding {
        match self {
            PaddingSpec::Valid => Padding::Valid,
            PaddingSpec::Same => Padding::Same,
        }
    }
}

fn one() -> usize {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    Conv {
        channels: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: PaddingSpec,
        #[serde(default)]
        activation: Activation,
    },
    Depthwise {
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: PaddingSpec,
        #[serde(default = "one")]
        multiplier: usize,
        #[serde(default)]
        activation: Activation,
    },
    MaxPool {
        size: usize,
        stride: Option<usize>,
    },
    AvgPool {
        size: usize,
        stride: Option<usize>,
    },
    GlobalAvgPool,
    Flatten,
    Dense {
        units: usize,
        #[serde(default)]
        activation: Activation,
    },
    Relu,
    Relu6,
}

/// An architecture: a name and its layers in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arch {
    #[serde(default)]
    pub name: String,
    /// The input `[h, w, c]`: written by `lepton train` from the data set (a spec may leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<[usize; 3]>,
    pub layers: Vec<LayerSpec>,
    /// Quantization-aware training's state: written by `lepton train --qat` / `lepton finetune
    /// --qat`, read by `lepton quantize` (its ranges replace calibration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qat: Option<Qat>,
}

/// What quantization-aware training tracked: the weight precision it simulated and, per layer
/// (in [`Arch::resolve`]'s order), the `(min, max)` of its output where the integer model gives
/// that output its own quantization (conv, depthwise, dense, global average pool).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Qat {
    pub weight_bits: u32,
    pub ranges: Vec<Option<(f32, f32)>>,
}

/// A layer with its activation fused and its input and output shapes `(h, w, c)` resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layer {
    Conv { out_c: usize, kernel: usize, stride: usize, padding: Padding, groups: usize, act: Activation },
    Pool { max: bool, size: usize, stride: usize },
    GlobalAvgPool,
    Flatten,
    Dense { units: usize, act: Activation },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub layer: Layer,
    pub input: (usize, usize, usize),
    pub output: (usize, usize, usize),
}

impl Arch {
    /// The seed CNN: Conv(32, 3x3, ReLU) - MaxPool 2 - Conv(64, 3x3, ReLU) - MaxPool 2 -
    /// Conv(64, 3x3, ReLU) - Flatten - Dense(64, ReLU) - Dense(10).
    pub fn seed() -> Arch {
        let conv = |channels| LayerSpec::Conv { channels, kernel: 3, stride: 1, padding: PaddingSpec::Valid, activation: Activation::Relu };
        let pool = || LayerSpec::MaxPool { size: 2, stride: None };
        Arch {
            name: "seed-cnn".into(),
            input: Some([28, 28, 1]),
            qat: None,
            layers: vec![
                conv(32),
                pool(),
                conv(64),
                pool(),
                conv(64),
                LayerSpec::Flatten,
                LayerSpec::Dense { units: 64, activation: Activation::Relu },
                LayerSpec::Dense { units: 10, activation: Activation::None },
            ],
        }
    }

    /// Whether this is the seed CNN on 28x28x1 images (whatever its name) without quantization-
    /// aware training: it trains with the seed's own model and file layout.
    pub fn is_seed(&self) -> bool {
        self.layers == Arch::seed().layers && self.input.is_none_or(|i| i == [28, 28, 1]) && self.qat.is_none()
    }

    /// The input shape `(h, w, c)`, if recorded.
    pub fn input_shape(&self) -> Option<(usize, usize, usize)> {
        self.input.map(|[h, w, c]| (h, w, c))
    }

    /// Read a spec: TOML for `.toml` files, JSON otherwise.
    pub fn load(path: &Path) -> Result<Arch> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the architecture {}", path.display()))?;
        let arch: Arch = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml")) {
            toml::from_str(&text).with_context(|| format!("{} is not a valid architecture (TOML)", path.display()))?
        } else {
            serde_json::from_str(&text).with_context(|| format!("{} is not a valid architecture (JSON)", path.display()))?
        };
        ensure!(!arch.layers.is_empty(), "{}: the architecture has no layers", path.display());
        Ok(arch)
    }

    /// The architecture saved in a model directory; one without `arch.json` (older models) is
    /// the seed CNN.
    pub fn of_model(dir: &Path) -> Result<Arch> {
        let path = dir.join(ARCH_FILE);
        if path.is_file() {
            Arch::load(&path)
        } else {
            Ok(Arch::seed())
        }
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::write_atomically(&dir.join(ARCH_FILE), serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// The layers with activations fused and shapes resolved for an input of `input`, ending in
    /// `classes` values; an error names the layer that does not fit.
    pub fn resolve(&self, input: (usize, usize, usize), classes: usize) -> Result<Vec<Resolved>> {
        let mut out: Vec<Resolved> = Vec::new();
        let mut shape = input;
        for (i, spec) in self.layers.iter().enumerate() {
            let at = || format!("layer {i} ({})", spec.kind());
            let fused = match spec {
                LayerSpec::Relu | LayerSpec::Relu6 => {
                    let act = if *spec == LayerSpec::Relu { Activation::Relu } else { Activation::Relu6 };
                    let Some(previous) = out.last_mut() else { bail!("{}: an activation needs a conv, depthwise or dense layer before it", at()) };
                    match &mut previous.layer {
                        Layer::Conv { act: a, .. } | Layer::Dense { act: a, .. } if *a == Activation::None => *a = act,
                        _ => bail!("{}: an activation fuses into a conv, depthwise or dense layer without one", at()),
                    }
                    true
                }
                _ => false,
            };
            if fused {
                continue;
            }
            let layer = resolve_layer(spec, shape).with_context(at)?;
            let output = output_shape(&layer, shape).with_context(at)?;
            out.push(Resolved { layer, input: shape, output });
            shape = output;
        }
        ensure!(shape == (1, 1, classes), "the last layer gives {}x{}x{} values; the data set has {classes} classes (end with a dense layer of {classes} units)", shape.0, shape.1, shape.2);
        Ok(out)
    }

    /// Trainable parameters for an input of `input` with `classes` classes.
    pub fn params(&self, input: (usize, usize, usize), classes: usize) -> Result<usize> {
        Ok(self.resolve(input, classes)?.iter().map(Resolved::params).sum())
    }
}

impl LayerSpec {
    fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Conv { .. } => "conv",
            LayerSpec::Depthwise { .. } => "depthwise",
            LayerSpec::MaxPool { .. } => "max_pool",
            LayerSpec::AvgPool { .. } => "avg_pool",
            LayerSpec::GlobalAvgPool => "global_avg_pool",
            LayerSpec::Flatten => "flatten",
            LayerSpec::Dense { .. } => "dense",
            LayerSpec::Relu => "relu",
            LayerSpec::Relu6 => "relu6",
        }
    }
}

impl Resolved {
    pub fn params(&self) -> usize {
        match self.layer {
            Layer::Conv { out_c, kernel, groups, .. } => out_c * (self.input.2 / groups) * kernel * kernel + out_c,
            Layer::Dense { units, .. } => self.input.2 * units + units,
            _ => 0,
        }
    }
}

fn resolve_layer(spec: &LayerSpec, (h, w, c): (usize, usize, usize)) -> Result<Layer> {
    let positive = |what: &str, v: usize| -> Result<usize> {
        ensure!(v > 0, "{what} must be at least 1");
        Ok(v)
    };
    Ok(match *spec {
        LayerSpec::Conv { channels, kernel, stride, padding, activation } => {
            Layer::Conv { out_c: positive("channels", channels)?, kernel: positive("kernel", kernel)?, stride: positive("stride", stride)?, padding: padding.padding(), groups: 1, act: activation }
        }
        LayerSpec::Depthwise { kernel, stride, padding, multiplier, activation } => {
            Layer::Conv { out_c: c * positive("multiplier", multiplier)?, kernel: positive("kernel", kernel)?, stride: positive("stride", stride)?, padding: padding.padding(), groups: c, act: activation }
        }
        LayerSpec::MaxPool { size, stride } | LayerSpec::AvgPool { size, stride } => {
            let size = positive("size", size)?;
            Layer::Pool { max: matches!(spec, LayerSpec::MaxPool { .. }), size, stride: positive("stride", stride.unwrap_or(size))? }
        }
        LayerSpec::GlobalAvgPool => Layer::GlobalAvgPool,
        LayerSpec::Flatten => Layer::Flatten,
        LayerSpec::Dense { units, activation } => {
            ensure!(h == 1 && w == 1, "a dense layer reads a vector: put a flatten or global_avg_pool before it (its input is {h}x{w}x{c})");
            Layer::Dense { units: positive("units", units)?, act: activation }
        }
        LayerSpec::Relu | LayerSpec::Relu6 => unreachable!("fused before"),
    })
}

fn window(padding: Padding, n: usize, k: usize, s: usize) -> Result<usize> {
    match padding.output_size(n, k, s) {
        Some(o) if o > 0 => Ok(o),
        _ => bail!("a window of {k} with stride {s} does not fit an input of {n}"),
    }
}

fn output_shape(layer: &Layer, (h, w, c): (usize, usize, usize)) -> Result<(usize, usize, usize)> {
    Ok(match *layer {
        Layer::Conv { out_c, kernel, stride, padding, .. } => {
            ensure!(h > 1 || w > 1 || kernel == 1, "a conv needs an image: its input is already a vector");
            (window(padding, h, kernel, stride)?, window(padding, w, kernel, stride)?, out_c)
        }
        Layer::Pool { size, stride, .. } => (window(Padding::Valid, h, size, stride)?, window(Padding::Valid, w, size, stride)?, c),
        Layer::GlobalAvgPool => (1, 1, c),
        Layer::Flatten => (1, 1, h * w * c),
        Layer::Dense { units, .. } => (1, 1, units),
    })
}

/// TensorFlow's SAME padding of one dimension: (leading, trailing).
pub fn same_padding(n: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = n.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(n);
    (total / 2, total - total / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_resolves_to_its_shapes_and_parameters() {
        let layers = Arch::seed().resolve((28, 28, 1), 10).unwrap();
        let shapes: Vec<_> = layers.iter().map(|l| l.output).collect();
        assert_eq!(shapes, [(26, 26, 32), (13, 13, 32), (11, 11, 64), (5, 5, 64), (3, 3, 64), (1, 1, 576), (1, 1, 64), (1, 1, 10)]);
        assert_eq!(Arch::seed().params((28, 28, 1), 10).unwrap(), 320 + 18_496 + 36_928 + 36_928 + 650);
    }

    #[test]
    fn json_and_toml_specs_read_alike_and_activations_fuse() {
        let json = r#"{ "name": "t", "layers": [ {"type": "conv", "channels": 4, "kernel": 3, "padding": "same"}, {"type": "relu6"},
            {"type": "depthwise", "kernel": 3, "stride": 2, "multiplier": 2, "activation": "relu"}, {"type": "global_avg_pool"}, {"type": "dense", "units": 10} ] }"#;
        let toml = "name = \"t\"\n[[layers]]\ntype = \"conv\"\nchannels = 4\nkernel = 3\npadding = \"same\"\n[[layers]]\ntype = \"relu6\"\n\
            [[layers]]\ntype = \"depthwise\"\nkernel = 3\nstride = 2\nmultiplier = 2\nactivation = \"relu\"\n[[layers]]\ntype = \"global_avg_pool\"\n[[layers]]\ntype = \"dense\"\nunits = 10\n";
        let a: Arch = serde_json::from_str(json).unwrap();
        let b: Arch = toml::from_str(toml).unwrap();
        assert_eq!(a, b);
        let layers = a.resolve((28, 28, 1), 10).unwrap();
        assert_eq!(layers[0].layer, Layer::Conv { out_c: 4, kernel: 3, stride: 1, padding: Padding::Same, groups: 1, act: Activation::Relu6 });
        assert_eq!(layers[1].output, (13, 13, 8));
        assert_eq!(layers.len(), 4);
    }

    #[test]
    fn misfits_are_errors_that_name_the_layer() {
        let arch = |layers| Arch { name: String::new(), input: None, layers, qat: None };
        let err = |a: Arch| format!("{:#}", a.resolve((28, 28, 1), 10).unwrap_err());
        let e = err(arch(vec![LayerSpec::Conv { channels: 4, kernel: 3, stride: 1, padding: PaddingSpec::Valid, activation: Activation::None }, LayerSpec::Dense { units: 10, activation: Activation::None }]));
        assert!(e.contains("layer 1 (dense)") && e.contains("flatten"), "{e}");
        let e = err(arch(vec![LayerSpec::Flatten, LayerSpec::Dense { units: 7, activation: Activation::None }]));
        assert!(e.contains("10 classes"), "{e}");
        let e = err(arch(vec![LayerSpec::Relu, LayerSpec::Flatten]));
        assert!(e.contains("layer 0 (relu)"), "{e}");
        let e = err(arch(vec![LayerSpec::MaxPool { size: 40, stride: None }]));
        assert!(e.contains("layer 0 (max_pool)") && e.contains("does not fit"), "{e}");
        assert!(serde_json::from_str::<Arch>(r#"{"layers": [{"type": "conv", "channels": 4, "kernel": 3, "dilation": 2}]}"#).is_err());
    }

    #[test]
    fn same_padding_is_tensorflows() {
        assert_eq!(same_padding(28, 3, 1), (1, 1));
        assert_eq!(same_padding(28, 3, 2), (0, 1));
        assert_eq!(same_padding(7, 3, 2), (1, 1));
        assert_eq!(same_padding(5, 1, 1), (0, 0));
    }
}
