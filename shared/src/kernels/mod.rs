//! Reference int8 kernels, NHWC, TensorFlow Lite Micro arithmetic.
//!
//! One kernel per operation and data type, CMSIS-NN style: each has a `*_scratch_bytes`
//! function and takes all memory from the caller. None allocates; none panics: buffer lengths
//! are checked up front and reported as [`crate::Error::BufferSize`].

pub mod add;
pub mod argmax;
pub mod avg_pool;
pub mod conv2d;
pub mod depthwise_conv;
pub mod fast;
pub mod fully_connected;
pub mod max_pool;
pub mod mean;
pub mod pad;
pub mod softmax;

pub use add::{add_s8, add_s8_scratch_bytes, Add};
pub use depthwise_conv::{depthwise_conv2d_s8, depthwise_conv2d_s8_scratch_bytes, DepthwiseConv2d};
pub use mean::{mean_s8, mean_s8_scratch_bytes, Mean};
pub use pad::{pad_s8, pad_s8_scratch_bytes, Pad};

pub use argmax::argmax_s8;
pub use avg_pool::{avg_pool_s8, avg_pool_s8_scratch_bytes};
pub use conv2d::{conv2d_s8, conv2d_s8_scratch_bytes, Conv2d};
pub use fully_connected::{fully_connected_s8, fully_connected_s8_scratch_bytes, FullyConnected};
pub use max_pool::{max_pool_s8, max_pool_s8_scratch_bytes};
pub use softmax::{softmax_s8, softmax_s8_scratch_bytes, Softmax};

use crate::types::{Padding, Shape};

/// Geometry shared by max- and average-pooling.
#[derive(Clone, Copy, Debug)]
pub struct Pool {
    pub input: Shape,
    pub output: Shape,
    pub kernel_h: u8,
    pub kernel_w: u8,
    pub stride_h: u8,
    pub stride_w: u8,
    pub padding: Padding,
    pub act_min: i8,
    pub act_max: i8,
}

/// The kernel taps of a window that fall inside the input: `(k_start, k_end, origin)`, where tap
/// `k` in `k_start..k_end` reads input index `origin + k` (always in range). TFLite skips padded
/// positions rather than reading a padding value.
#[inline(always)]
pub(crate) fn window(o: usize, stride: usize, pad: usize, kernel: usize, input: usize) -> (usize, usize, isize) {
    let origin = (o * stride) as isize - pad as isize;
    let k_start = (-origin).max(0) as usize;
    let k_end = ((input as isize - origin).max(0) as usize).min(kernel);
    (k_start.min(k_end), k_end, origin)
}
