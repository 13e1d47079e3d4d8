//! ONNX with tract-onnx: export a float network as ONNX ([`export`]), and run an ONNX model as
//! a float reference independent of burn ([`tract`]).

pub mod export;
pub mod tract;

pub use export::{export, OPSET};
pub use tract::{bound_input_dims, float_logits, graph_input, guarded, read_bound, TractRunner};
