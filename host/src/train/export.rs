//! The trained burn model as a [`FloatNet`]: plain arrays that quantization and ONNX export
//! read, independent of burn.

use burn::module::Param;
use burn::prelude::*;
use lepton_nn::Padding;

use super::model::Cnn;
use crate::float_net::{Act, FloatNet, FloatOp};

pub(super) fn values<const D: usize>(p: &Param<Tensor<D>>) -> Vec<f32> {
    p.val().into_data().try_to_vec::<f32>().expect("f32 parameters")
}

fn conv(c: &burn::nn::conv::Conv2d) -> FloatOp {
    let [out_c, in_c, kh, kw] = c.weight.val().dims();
    FloatOp::Conv {
        weights_oihw: values(&c.weight),
        bias: c.bias.as_ref().map(values).unwrap_or_else(|| vec![0.0; out_c]),
        in_c,
        out_c,
        groups: 1,
        kernel: (kh, kw),
        stride: (1, 1),
        padding: Padding::Valid,
        act: Act::Relu,
    }
}

pub(super) fn dense_op(l: &burn::nn::Linear, act: Act) -> FloatOp {
    let [inputs, outputs] = l.weight.val().dims(); // burn stores Linear weights as [in, out]
    let w = values(&l.weight);
    let w = &w;
    let weights_out_in = (0..outputs).flat_map(|o| (0..inputs).map(move |i| w[i * outputs + o])).collect();
    FloatOp::Dense { weights_out_in, bias: l.bias.as_ref().map(values).unwrap_or_else(|| vec![0.0; outputs]), inputs, outputs, act }
}

/// The seed CNN as a float network on a 28x28x1 input, ending with a softmax (so the device can
/// report a confidence). burn flattens in NHWC order, like Keras, so the dense weights read the
/// engine's buffers as they are.
pub fn float_net(model: &Cnn) -> FloatNet {
    let pool = || FloatOp::Pool { max: true, kernel: (2, 2), stride: (2, 2), padding: Padding::Valid };
    let layers = [
        ("relu1", conv(&model.conv1)),
        ("pool1", pool()),
        ("relu2", conv(&model.conv2)),
        ("pool2", pool()),
        ("relu3", conv(&model.conv3)),
        ("flat", FloatOp::Flatten),
        ("fc1", dense_op(&model.fc1, Act::Relu)),
        ("logits", dense_op(&model.fc2, Act::None)),
        ("softmax", FloatOp::Softmax),
    ];
    FloatNet::chain((28, 28, 1), layers.into())
}
