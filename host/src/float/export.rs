//! The trained weights as plain arrays, independent of burn: what quantization and ONNX export read.

use burn::module::Param;
use burn::prelude::*;

use super::model::Cnn;

/// Float parameters of the seed CNN, layer by layer.
#[derive(Clone, Debug)]
pub struct FloatCnn {
    /// conv1..conv3: weights OIHW `[out, in, 3, 3]`, bias `[out]`.
    pub convs: Vec<ConvParams>,
    /// fc1, fc2: weights `[out, in]` (fc1's `in` is the NHWC-flattened 3x3x64 tensor), bias `[out]`.
    pub dense: Vec<DenseParams>,
}

#[derive(Clone, Debug)]
pub struct ConvParams {
    pub in_c: usize,
    pub out_c: usize,
    pub kernel: usize,
    pub weights_oihw: Vec<f32>,
    pub bias: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct DenseParams {
    pub inputs: usize,
    pub outputs: usize,
    pub weights_out_in: Vec<f32>,
    pub bias: Vec<f32>,
}

fn values<const D: usize>(p: &Param<Tensor<D>>) -> Vec<f32> {
    p.val().into_data().try_to_vec::<f32>().expect("f32 parameters")
}

impl FloatCnn {
    pub fn from_model(model: &Cnn) -> Self {
        let convs = [&model.conv1, &model.conv2, &model.conv3]
            .into_iter()
            .map(|c| {
                let [out_c, in_c, kh, _] = c.weight.val().dims();
                ConvParams {
                    in_c,
                    out_c,
                    kernel: kh,
                    weights_oihw: values(&c.weight),
                    bias: c.bias.as_ref().map(values).unwrap_or_else(|| vec![0.0; out_c]),
                }
            })
            .collect();
        let dense = [&model.fc1, &model.fc2]
            .into_iter()
            .map(|l| {
                let [inputs, outputs] = l.weight.val().dims(); // burn stores Linear weights as [in, out]
                let w = values(&l.weight);
                let weights_out_in = (0..outputs).flat_map(|o| (0..inputs).map(move |i| (o, i))).map(|(o, i)| w[i * outputs + o]).collect();
                DenseParams { inputs, outputs, weights_out_in, bias: l.bias.as_ref().map(values).unwrap_or_else(|| vec![0.0; outputs]) }
            })
            .collect();
        FloatCnn { convs, dense }
    }
}
