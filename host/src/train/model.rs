//! The seed CNN: Conv2D(32,3x3,ReLU) - MaxPool2x2 - Conv2D(64,3x3,ReLU) - MaxPool2x2 -
//! Conv2D(64,3x3,ReLU) - Flatten - Dense(64,ReLU) - Dense(10).
//!
//! On `flex` the convolution layers run as [`super::cnn_ops`] (NHWC, conv + ReLU + pool fused,
//! hand-written backward); elsewhere, and in [`Cnn::forward_reference`], as burn's own NCHW
//! `conv2d` and `max_pool2d`. Both read the same parameters, so a model file serves both.

use burn::module::{Initializer, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;

use super::cnn_ops::conv3x3_relu;

#[derive(Module, Debug)]
pub struct Cnn {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub conv3: Conv2d,
    pub fc1: Linear,
    pub fc2: Linear,
    pool: MaxPool2d,
    relu: Relu,
}

/// Glorot-uniform weights and zero biases: Keras' defaults, which the seed recipe uses.
pub(super) fn glorot() -> Initializer {
    Initializer::XavierUniform { gain: 1.0 }
}

/// A zero bias that still trains (`Param::map` with `zeros_like` would give a constant).
pub(super) fn zero_bias(b: Param<Tensor<1>>) -> Param<Tensor<1>> {
    Param::from_tensor(b.val().zeros_like())
}

fn conv(input: usize, output: usize, device: &Device) -> Conv2d {
    let mut c = Conv2dConfig::new([input, output], [3, 3]).with_initializer(glorot()).init(device);
    c.bias = c.bias.map(zero_bias);
    c
}

fn dense(input: usize, output: usize, device: &Device) -> Linear {
    let mut l = LinearConfig::new(input, output).with_initializer(glorot()).init(device);
    l.bias = l.bias.map(zero_bias);
    l
}

impl Cnn {
    pub const FLAT: usize = 64 * 3 * 3;

    pub fn new(device: &Device) -> Self {
        Cnn {
            conv1: conv(1, 32, device),
            conv2: conv(32, 64, device),
            conv3: conv(64, 64, device),
            fc1: dense(Self::FLAT, 64, device),
            fc2: dense(64, 10, device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            relu: Relu::new(),
        }
    }

    /// `[batch, 1, 28, 28]` in [0, 1] to `[batch, 10]` logits.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        if uses_cnn_ops(&x.device()) {
            self.forward_fused(x)
        } else {
            self.forward_reference(x)
        }
    }

    /// The forward pass with the fused NHWC layers of [`super::cnn_ops`] (`flex` only).
    pub fn forward_fused(&self, x: Tensor<4>) -> Tensor<2> {
        let x = x.permute([0, 2, 3, 1]);
        let x = fused_layer(&self.conv1, x, true);
        let x = fused_layer(&self.conv2, x, true);
        let x = fused_layer(&self.conv3, x, false);
        let [b, h, w, c] = x.dims();
        let x = self.relu.forward(self.fc1.forward(x.reshape([b, h * w * c])));
        self.fc2.forward(x)
    }

    /// The forward pass with burn's own layers, on any backend.
    pub fn forward_reference(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(self.relu.forward(self.conv1.forward(x)));
        let x = self.pool.forward(self.relu.forward(self.conv2.forward(x)));
        let x = self.relu.forward(self.conv3.forward(x));
        // Flatten in NHWC order, as Keras does, so the exported weights read an NHWC buffer.
        let [b, c, h, w] = x.dims();
        let x = x.permute([0, 2, 3, 1]).reshape([b, h * w * c]);
        let x = self.relu.forward(self.fc1.forward(x));
        self.fc2.forward(x)
    }

    /// Every intermediate activation (after each fused layer), for calibration.
    pub fn forward_traced(&self, x: Tensor<4>) -> Vec<Tensor<2>> {
        let flat = |t: Tensor<4>| {
            let [b, c, h, w] = t.dims();
            t.permute([0, 2, 3, 1]).reshape([b, h * w * c])
        };
        let c1 = self.relu.forward(self.conv1.forward(x));
        let p1 = self.pool.forward(c1.clone());
        let c2 = self.relu.forward(self.conv2.forward(p1.clone()));
        let p2 = self.pool.forward(c2.clone());
        let c3 = self.relu.forward(self.conv3.forward(p2.clone()));
        let f = flat(c3.clone());
        let h = self.relu.forward(self.fc1.forward(f));
        let logits = self.fc2.forward(h.clone());
        vec![flat(c1), flat(p1), flat(c2), flat(p2), flat(c3), h, logits]
    }
}

/// Whether `device` runs [`super::cnn_ops`]: `flex`, with or without autodiff.
pub fn uses_cnn_ops(device: &Device) -> bool {
    matches!(device.clone().inner().as_dispatch(), burn::backend::DispatchDevice::Flex(_))
}

fn fused_layer(conv: &Conv2d, x: Tensor<4>, pool: bool) -> Tensor<4> {
    let bias = conv.bias.as_ref().expect("the seed CNN's convolutions have biases").val();
    conv3x3_relu(x, conv.weight.val(), bias, pool)
}
