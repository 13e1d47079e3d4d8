//! The seed CNN's convolution layers as one burn backend-extension operation, `conv3x3_relu`
//! (3x3 valid convolution + bias + ReLU, optionally + 2x2 max-pool, NHWC), with a hand-written
//! backward pass for `flex` training. The kernels are in [`super::conv_kernels`].
//!
//! Other backends (the `wgpu`/`cuda` features) never reach this operation: the model checks the
//! device and uses burn's own `conv2d`/`max_pool2d` there.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Flex};
use burn::prelude::*;
use burn::backend::TensorMetadata;
use burn::tensor::{DType, TensorData};

use super::conv_kernels::{self, Conv3x3, Saved};

#[backend_extension(Flex, Autodiff)]
pub trait CnnOps: Backend {
    /// `x` `[batch, height, width, cin]`, `weight` `[cout, cin, 3, 3]`, `bias` `[cout]`.
    fn conv3x3_relu(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, pool: bool) -> FloatTensor<Self>;
}

/// `conv3x3_relu` on a model tensor (the device must be `flex`, with or without autodiff).
pub fn conv3x3_relu(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>, pool: bool) -> Tensor<4> {
    let out = <burn::backend::Dispatch as CnnOps>::conv3x3_relu(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch(), pool);
    Tensor::from_dispatch(out)
}

/// A contiguous f32 copy-on-need of `t` (free when `t` already is one).
fn contiguous(t: &FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "the fused CNN layers run in f32");
    t.to_contiguous()
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

fn flex_tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn conv_shape(x: &FlexTensor, weight: &FlexTensor, pool: bool) -> Conv3x3 {
    let [batch, height, width, cin] = x.shape().dims::<4>();
    let [cout, wcin, kh, kw] = weight.shape().dims::<4>();
    assert!(wcin == cin && kh == 3 && kw == 3, "conv3x3_relu: weight {:?} does not fit input {:?}", weight.shape(), x.shape());
    Conv3x3 { batch, height, width, cin, cout, pool }
}

/// The layer's output and what its backward pass needs (`x` must be contiguous).
fn forward(x: &FlexTensor, weight: &FlexTensor, bias: &FlexTensor, pool: bool) -> (FlexTensor, Saved) {
    let shape = conv_shape(x, weight, pool);
    let (out, saved) = conv_kernels::forward(values(x), values(&contiguous(weight)), values(&contiguous(bias)), shape);
    (flex_tensor(out, shape.output_shape().to_vec()), saved)
}

impl CnnOps for Flex {
    fn conv3x3_relu(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, pool: bool) -> FlexTensor {
        forward(&contiguous(&x), &weight, &bias, pool).0
    }
}

#[derive(Debug)]
struct Conv3x3ReluBackward;

impl Backward<Flex, 3> for Conv3x3ReluBackward {
    /// The layer's input (contiguous), the forward pass's saved state, and the weight and bias
    /// shapes.
    type State = (FlexTensor, Saved, [Vec<usize>; 2]);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, saved, [weight_shape, bias_shape]) = ops.state;
        let g = conv_kernels::backward(values(&x), values(&contiguous(&grad)), &saved, node_x.is_some());
        if let (Some(node), Some(input)) = (node_x, g.input) {
            grads.register::<Flex>(node.id, flex_tensor(input, x.shape().to_vec()));
        }
        if let Some(node) = node_weight {
            grads.register::<Flex>(node.id, flex_tensor(g.weight, weight_shape));
        }
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, flex_tensor(g.bias, bias_shape));
        }
    }
}

impl<C: CheckpointStrategy> CnnOps for Autodiff<Flex, C> {
    fn conv3x3_relu(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, pool: bool) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        let (weight, weight_node) = weight.into_parts();
        let (bias, bias_node) = bias.into_parts();
        let x = contiguous(&x);
        match Conv3x3ReluBackward.prepare::<C>([x_node, weight_node, bias_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let shapes = [weight.shape().to_vec(), bias.shape().to_vec()];
                let (out, saved) = forward(&x, &weight, &bias, pool);
                prep.finish((x, saved, shapes), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&x, &weight, &bias, pool).0),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;
    use burn::tensor::{Distribution, TensorData};

    use crate::train::model::Cnn;

    fn close(a: TensorData, b: TensorData, tolerance: f32, what: &str) {
        let (a, b) = (a.try_into_vec::<f32>().expect("f32"), b.try_into_vec::<f32>().expect("f32"));
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        let scale = b.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        assert!(worst <= tolerance * scale.max(1e-6), "{what}: max difference {worst} (scale {scale})");
    }

    /// The fused layers and burn's own conv2d/relu/max_pool2d give the same logits and the same
    /// gradients for every parameter (to f32 rounding), batch and odd pool sizes included; and
    /// every parameter, biases included, gets a gradient (an unwrap fails if one is frozen).
    #[test]
    fn fused_layers_match_burns_layers() {
        let device = Device::flex().autodiff();
        device.seed(7);
        let model = Cnn::new(&device);
        let x = Tensor::<4>::random([19, 1, 28, 28], Distribution::Uniform(0.0, 1.0), &device);
        let probe = Tensor::<2>::random([19, 10], Distribution::Uniform(-1.0, 1.0), &device);

        let fused = model.forward_fused(x.clone());
        let reference = model.forward_reference(x);
        close(fused.clone().into_data(), reference.clone().into_data(), 1e-5, "logits");

        let g_fused = (fused * probe.clone()).sum().backward();
        let g_reference = (reference * probe).sum().backward();
        let params = [
            (&model.conv1.weight, "conv1.weight"),
            (&model.conv2.weight, "conv2.weight"),
            (&model.conv3.weight, "conv3.weight"),
        ];
        for (p, name) in params {
            close(p.grad(&g_fused).unwrap().into_data(), p.grad(&g_reference).unwrap().into_data(), 1e-4, name);
        }
        let biases = [(&model.conv1, "conv1.bias"), (&model.conv2, "conv2.bias"), (&model.conv3, "conv3.bias")];
        for (c, name) in biases {
            let b = c.bias.as_ref().unwrap();
            close(b.grad(&g_fused).unwrap().into_data(), b.grad(&g_reference).unwrap().into_data(), 1e-4, name);
        }
        let dense = [(&model.fc1, "fc1"), (&model.fc2, "fc2")];
        for (l, name) in dense {
            close(l.weight.grad(&g_fused).unwrap().into_data(), l.weight.grad(&g_reference).unwrap().into_data(), 1e-4, name);
            let b = l.bias.as_ref().unwrap();
            close(b.grad(&g_fused).unwrap().into_data(), b.grad(&g_reference).unwrap().into_data(), 1e-4, name);
        }
    }

    /// Without autodiff (evaluation), the fused path gives the reference's logits too.
    #[test]
    fn inference_without_autodiff_matches() {
        let device = Device::flex();
        let model = Cnn::new(&device);
        let x = Tensor::<4>::random([5, 1, 28, 28], Distribution::Uniform(0.0, 1.0), &device);
        close(model.forward(x.clone()).into_data(), model.forward_reference(x).into_data(), 1e-5, "logits");
    }
}
