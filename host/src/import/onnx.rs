//! `lepton import FILE.onnx`: a float ONNX model, as exporters write it (tf2onnx,
//! `torch.onnx.export`), to a [`FloatNet`], calibrated and quantized like a `lepton train` model.
//!
//! tract does the graph work: it loads the file, binds every symbolic (batch) dimension to 1
//! (the device runs batch 1), then analyses, constant-folds and declutters it — shape
//! subgraphs, reshapes and transposes that only move data, BatchNormalization turned into
//! per-channel affine ops, Gemm/MatMul into einsums. This module converts tract's typed graph
//! into Lepton's: every tensor keeps its ONNX shape (tract's fact) and a table from that shape's
//! flat index to the index of Lepton's NHWC storage, so layout follows from the shapes and the
//! ops, never from guessing NHWC or NCHW by node patterns. A transpose or reshape only rewrites
//! the table; a dense layer reads its input through it (an NCHW flatten needs nothing special).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, bail, ensure, Context, Result};
use lepton_nn::Padding;
use prost::Message;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{Pad, PadMode};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec, SumPool};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer, Softmax};

use crate::float_net::{Act, FloatLayer, FloatNet, FloatOp};

/// ONNX ops whose outputs Lepton can run, directly or after tract folds them away.
const SUPPORTED: [&str; 27] = [
    "Conv", "BatchNormalization", "Relu", "Clip", "Add", "Sub", "Mul", "Div", "MaxPool", "AveragePool", "GlobalAveragePool", "Pad",
    "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Gemm", "MatMul", "Softmax", "Transpose", "Identity", "Dropout", "Constant", "Shape",
    "Gather", "Cast", "ReduceMean",
];
/// Ops of the shape arithmetic tf2onnx writes, which tract folds into constants.
const SHAPE_ARITHMETIC: [&str; 4] = ["Slice", "Concat", "ConstantOfShape", "Range"];

/// An imported network and how its ONNX input maps to Lepton's NHWC input.
#[derive(Clone, Debug)]
pub struct Imported {
    pub net: FloatNet,
    /// The ONNX input's dimensions with the batch bound to 1.
    pub input_dims: Vec<usize>,
    /// For each element of an ONNX input (row-major in `input_dims`), its index in Lepton's
    /// NHWC input tensor.
    pub input_to_storage: Vec<usize>,
}

impl Imported {
    /// One ONNX-layout input (row-major `input_dims`) in Lepton's NHWC order, as f64.
    pub fn to_storage(&self, x: &[f32]) -> Vec<f64> {
        let mut out = vec![0.0; x.len()];
        for (i, &s) in self.input_to_storage.iter().enumerate() {
            if let (Some(o), Some(&v)) = (out.get_mut(s), x.get(i)) {
                *o = v as f64;
            }
        }
        out
    }
}

/// A tensor of the typed graph as Lepton sees it.
#[derive(Clone, Debug)]
enum Value {
    Const(Arc<Tensor>),
    Act(Act4),
}

#[derive(Clone, Debug)]
struct Act4 {
    /// FloatNet tensor (0: the input, `k + 1`: layer `k`).
    tensor: usize,
    /// ONNX (tract fact) dimensions.
    dims: Vec<usize>,
    /// Flat index in `dims` to the index in the tensor's NHWC storage.
    table: Vec<usize>,
}

/// The table of an NCHW tensor `[1, C, H, W]` (or `[C, H, W]`) stored NHWC.
fn nchw_table(dims: &[usize]) -> Option<Vec<usize>> {
    let (c, h, w) = match dims {
        [1, c, h, w] | [c, h, w] => (*c, *h, *w),
        _ => return None,
    };
    Some((0..c * h * w).map(|i| ((i / w % h) * w + i % w) * c + i / (h * w)).collect())
}

/// The table of a tensor in tract's data format `fmt` (channels first or last), if its rank fits.
fn format_table(fmt: DataFormat, dims: &[usize]) -> Option<Vec<usize>> {
    match (fmt, dims.len()) {
        (DataFormat::NCHW, 4) | (DataFormat::CHW, 3) => nchw_table(dims),
        (DataFormat::NHWC, 4) | (DataFormat::HWC, 3) => Some(identity(volume(dims))),
        _ => None,
    }
}

/// Height and width of a tensor in data format `fmt`.
fn spatial(fmt: DataFormat, dims: &[usize]) -> Result<(usize, usize)> {
    match (fmt, dims) {
        (DataFormat::NCHW, [_, _, h, w]) | (DataFormat::CHW, [_, h, w]) | (DataFormat::NHWC, [_, h, w, _]) | (DataFormat::HWC, [h, w, _]) => Ok((*h, *w)),
        _ => bail!("a tensor of shape {dims:?} in {fmt:?}"),
    }
}

/// Check that `a` is stored as its data format says.
fn expect_format(a: &Act4, fmt: DataFormat, what: &str) -> Result<Vec<usize>> {
    let table = format_table(fmt, &a.dims).with_context(|| format!("{what} of a rank-{} tensor in {fmt:?}", a.dims.len()))?;
    ensure!(a.table == table, "{what} of a tensor whose layout Lepton does not store as {fmt:?}");
    Ok(table)
}

fn identity(n: usize) -> Vec<usize> {
    (0..n).collect()
}

fn volume(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Read, bind, simplify: the ONNX file as tract's decluttered typed graph.
fn typed_model(bytes: &[u8], dims: &[usize]) -> Result<TypedModel> {
    let model = crate::onnx::read_bound(bytes, dims).context("reading the ONNX graph with tract-onnx")?;
    crate::onnx::guarded("analysing the ONNX graph", || model.into_typed().and_then(|m| m.into_decluttered()).map_err(|e| anyhow!("{e:?}")))
        .context("analysing the ONNX graph with tract (batch bound to 1)")
}

/// The graph's input dimensions, symbolic ones (the batch) bound to 1, and every node checked
/// against what Lepton supports (an error names the op and the node).
fn check_graph(bytes: &[u8]) -> Result<Vec<usize>> {
    let proto = ModelProto::decode(bytes).map_err(|e| anyhow!("not an ONNX model: {e}"))?;
    let graph = proto.graph.as_ref().context("ONNX model has no graph")?;
    for node in &graph.node {
        let op = node.op_type.as_str();
        if !SUPPORTED.contains(&op) && !SHAPE_ARITHMETIC.contains(&op) {
            bail!(
                "unsupported ONNX op {op} (node {}); Lepton imports Conv (incl. depthwise), BatchNormalization, Relu, Clip, Add, Mul, \
                 MaxPool, AveragePool, GlobalAveragePool, Pad, Flatten, Reshape, Squeeze, Unsqueeze, Gemm, MatMul, Softmax, Transpose",
                node.name
            );
        }
    }
    let dims = crate::onnx::bound_input_dims(graph)?;
    ensure!(!dims.is_empty(), "the ONNX input has no shape");
    Ok(dims)
}

/// The node of `outlet`'s name (for messages).
fn node_name(model: &TypedModel, node: usize) -> String {
    format!("{} ({})", model.nodes[node].name, model.nodes[node].op.name())
}

/// Convert an ONNX file into a float network.
pub fn parse(bytes: &[u8]) -> Result<Imported> {
    let dims = check_graph(bytes)?;
    let model = typed_model(bytes, &dims)?;
    Converter::new(&model)?.run(dims)
}

struct Converter<'m> {
    model: &'m TypedModel,
    values: HashMap<OutletId, Value>,
    layers: Vec<FloatLayer>,
    /// Readers of each outlet: fusions need a single one.
    readers: HashMap<OutletId, usize>,
    /// Global pools standing for tract's sum over H and W: the element count, until the
    /// product by 1/count that follows.
    pending_sums: HashMap<usize, usize>,
    /// Lepton's input shape (NHWC).
    input_shape: (usize, usize, usize),
}

impl<'m> Converter<'m> {
    fn new(model: &'m TypedModel) -> Result<Self> {
        let mut readers = HashMap::new();
        for node in &model.nodes {
            for i in &node.inputs {
                *readers.entry(*i).or_insert(0) += 1;
            }
        }
        for o in model.output_outlets().map_err(|e| anyhow!("{e:?}"))? {
            *readers.entry(*o).or_insert(0) += 1;
        }
        Ok(Converter { model, values: HashMap::new(), layers: Vec::new(), readers, pending_sums: HashMap::new(), input_shape: (1, 1, 1) })
    }

    fn run(mut self, input_dims: Vec<usize>) -> Result<Imported> {
        let order = self.model.eval_order().map_err(|e| anyhow!("{e:?}"))?;
        let mut input: Option<(Vec<usize>, Vec<usize>, (usize, usize, usize))> = None;
        for id in order {
            let node = &self.model.nodes[id];
            let outlet = OutletId::new(id, 0);
            if let Some(k) = &node.outputs[0].fact.konst {
                self.values.insert(outlet, Value::Const(k.clone()));
                continue;
            }
            if node.inputs.is_empty() {
                let (table, shape) = self.input_layout(id)?;
                let dims = self.dims(outlet)?;
                self.input_shape = shape;
                input = Some((dims.clone(), table.clone(), shape));
                self.values.insert(outlet, Value::Act(Act4 { tensor: 0, dims, table }));
                continue;
            }
            let value = self.convert(id).with_context(|| format!("ONNX node {}", node_name(self.model, id)))?;
            self.values.insert(outlet, value);
        }
        let (dims, table, shape) = input.context("the ONNX graph has no input")?;
        ensure!(volume(&dims) == volume(&input_dims), "tract's input shape {dims:?} differs from the declared {input_dims:?}");
        let out = *self.model.output_outlets().map_err(|e| anyhow!("{e:?}"))?.first().context("the ONNX graph has no output")?;
        let Some(Value::Act(a)) = self.values.get(&out).cloned() else { bail!("the ONNX output is a constant") };
        ensure!(a.tensor == self.layers.len() && a.tensor > 0, "the ONNX output is not the last layer's output");
        ensure!(a.table == identity(a.table.len()), "the ONNX output is a permutation of Lepton's output tensor (a transpose at the end)");
        ensure!(self.layers.iter().any(|l| matches!(l.op, FloatOp::Conv { .. } | FloatOp::Dense { .. })), "the ONNX model has no Conv or Gemm layer");
        let net = FloatNet { input: shape, layers: self.layers };
        net.shapes()?;
        Ok(Imported { net, input_dims: dims, input_to_storage: table })
    }

    fn dims(&self, outlet: OutletId) -> Result<Vec<usize>> {
        let fact = self.model.outlet_fact(outlet).map_err(|e| anyhow!("{e:?}"))?;
        fact.shape.as_concrete().map(|s| s.to_vec()).with_context(|| format!("tensor of node {} has a symbolic shape", self.model.nodes[outlet.node].name))
    }

    /// The input's storage: NCHW when a reader is a conv or pool in NCHW, else as it is.
    fn input_layout(&self, id: usize) -> Result<(Vec<usize>, (usize, usize, usize))> {
        let dims = self.dims(OutletId::new(id, 0))?;
        let nchw_reader = self.model.nodes.iter().any(|n| {
            n.inputs.first() == Some(&OutletId::new(id, 0))
                && (n.op_as::<Conv>().map(|c| &c.pool_spec).or(n.op_as::<MaxPool>().map(|p| &p.pool_spec)).or(n.op_as::<SumPool>().map(|p| &p.pool_spec)))
                    .is_some_and(|p| matches!(p.data_format, DataFormat::NCHW | DataFormat::CHW))
        }) || self.model.nodes.iter().any(|n| n.inputs.first() == Some(&OutletId::new(id, 0)) && n.op_as::<EinSum>().is_some_and(|e| is_pointwise(&e.axes.to_string()).is_some()));
        match dims.as_slice() {
            [1, c, h, w] if nchw_reader => Ok((nchw_table(&dims).context("nchw")?, (*h, *w, *c))),
            [1, h, w, c] => Ok((identity(volume(&dims)), (*h, *w, *c))),
            [1, n] | [n] => Ok((identity(*n), (1, 1, *n))),
            [1, h, w] => Ok((identity(h * w), (*h, *w, 1))),
            other => bail!("ONNX input of shape {other:?}; Lepton takes images (rank 3 or 4 with batch 1) or vectors"),
        }
    }

    fn act(&self, outlet: OutletId) -> Result<Act4> {
        match self.values.get(&outlet) {
            Some(Value::Act(a)) => Ok(a.clone()),
            Some(Value::Const(_)) => bail!("a constant where Lepton needs a tensor computed from the input"),
            None => bail!("an input that was not converted"),
        }
    }

    fn konst(&self, outlet: OutletId) -> Option<Arc<Tensor>> {
        match self.values.get(&outlet) {
            Some(Value::Const(t)) => Some(t.clone()),
            _ => None,
        }
    }

    fn floats(t: &Tensor) -> Result<Vec<f32>> {
        let t = t.cast_to::<f32>().map_err(|e| anyhow!("{e:?}"))?;
        Ok(t.to_plain_array_view::<f32>().map_err(|e| anyhow!("{e:?}"))?.iter().copied().collect())
    }

    fn push(&mut self, op: FloatOp, inputs: Vec<usize>, name: &str) -> usize {
        self.layers.push(FloatLayer { op, inputs, output_name: name.to_string() });
        self.layers.len()
    }

    /// The layer that wrote tensor `t`, if a fusion into it is allowed: `outlet` has one reader.
    fn fusable(&mut self, outlet: OutletId, t: usize) -> Option<&mut FloatOp> {
        if self.readers.get(&outlet).copied().unwrap_or(0) != 1 || t == 0 || t != self.layers.len() {
            return None;
        }
        self.layers.get_mut(t - 1).map(|l| &mut l.op)
    }

    fn convert(&mut self, id: usize) -> Result<Value> {
        let node = &self.model.nodes[id];
        let name = node.name.clone();
        let out_dims = self.dims(OutletId::new(id, 0))?;
        if let Some(conv) = node.op_as::<Conv>() {
            return self.conv(conv, &node.inputs, out_dims, &name);
        }
        if let Some(pool) = node.op_as::<MaxPool>() {
            return self.pool(&pool.pool_spec, true, node.inputs[0], out_dims, &name);
        }
        if let Some(pool) = node.op_as::<SumPool>() {
            ensure!(pool.normalize, "a sum pool that does not average");
            return self.pool(&pool.pool_spec, false, node.inputs[0], out_dims, &name);
        }
        if let Some(op) = node.op_as::<TypedBinOp>() {
            return self.binary(op.0.name(), &node.inputs, out_dims, &name);
        }
        if let Some(e) = node.op_as::<EinSum>() {
            return self.einsum(&e.axes.to_string(), &node.inputs, out_dims, &name);
        }
        if node.op_is::<AxisOp>() {
            let a = self.act(node.inputs[0])?;
            let op = node.op_as::<AxisOp>().context("axis op")?;
            let table = match op {
                AxisOp::Move(from, to) => permuted(&a.dims, &a.table, *from, *to),
                _ => a.table.clone(),
            };
            return Ok(Value::Act(Act4 { tensor: a.tensor, dims: out_dims, table }));
        }
        if let Some(pad) = node.op_as::<Pad>() {
            let a = self.act(node.inputs[0])?;
            ensure!(matches!(&pad.mode, PadMode::Constant(v) if Self::floats(v)?.iter().all(|&x| x == 0.0)), "Pad with a value other than 0");
            let p = &pad.pads;
            let (fmt, (hp, wp)) = if Some(&a.table) == nchw_table(&a.dims).as_ref() && p.len() == 4 && p[0] == (0, 0) && p[1] == (0, 0) {
                (DataFormat::NCHW, (p[2], p[3]))
            } else if a.table == identity(a.table.len()) && p.len() == 4 && p[0] == (0, 0) && p[3] == (0, 0) {
                (DataFormat::NHWC, (p[1], p[2]))
            } else {
                bail!("Pad of the batch or channel axis, or of a tensor in another layout")
            };
            let t = self.push(FloatOp::Pad { pads: [hp.0, hp.1, wp.0, wp.1] }, vec![a.tensor], &name);
            return Ok(Value::Act(Act4 { tensor: t, table: format_table(fmt, &out_dims).context("pad output")?, dims: out_dims }));
        }
        if let Some(r) = node.op_as::<Reduce>() {
            return self.reduce(r, node.inputs[0], out_dims, &name);
        }
        if let Some(s) = node.op_as::<Softmax>() {
            let a = self.act(node.inputs[0])?;
            ensure!(s.axes.len() == 1 && s.axes[0] + 1 == a.dims.len(), "Softmax over an axis other than the last");
            ensure!(a.table == identity(a.table.len()), "Softmax of a tensor whose last axis is not Lepton's channel axis");
            let t = self.vector(a.clone(), &name)?;
            let t = self.push(FloatOp::Softmax, vec![t], &name);
            return Ok(Value::Act(Act4 { tensor: t, dims: out_dims, table: a.table }));
        }
        bail!("tract op {} is not one Lepton runs", node.op.name())
    }

    /// Tensor `a` as a Lepton vector (a flatten when it is stored with a spatial shape).
    fn vector(&mut self, a: Act4, name: &str) -> Result<usize> {
        let net = FloatNet { input: self.input_shape, layers: self.layers.clone() };
        let (h, w, _) = net.shapes()?[a.tensor];
        if h == 1 && w == 1 {
            return Ok(a.tensor);
        }
        Ok(self.push(FloatOp::Flatten, vec![a.tensor], &format!("{name}_flat")))
    }

    fn conv(&mut self, conv: &Conv, inputs: &[OutletId], out_dims: Vec<usize>, name: &str) -> Result<Value> {
        let a = self.act(inputs[0])?;
        let spec = &conv.pool_spec;
        let fmt = spec.data_format;
        expect_format(&a, fmt, "Conv")?;
        ensure!(spec.dilations.as_ref().is_none_or(|d| d.iter().all(|&x| x == 1)), "dilated Conv is not supported");
        let w = self.konst(inputs[1]).context("Conv weights are not constant")?;
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let (in_c, out_c, group) = (spec.input_channels, spec.output_channels, conv.group);
        ensure!(group == 1 || (group == in_c && out_c % in_c == 0), "grouped Conv with group {group} (neither 1 nor depthwise)");
        let weights_oihw = oihw(&Self::floats(&w)?, conv.kernel_fmt, out_c, in_c / group, kh, kw)?;
        let bias = match inputs.get(2).and_then(|&b| self.konst(b)) {
            Some(b) => {
                let b = Self::floats(&b)?;
                if b.len() == 1 { vec![b[0]; out_c] } else { b }
            }
            None => vec![0.0; out_c],
        };
        ensure!(bias.len() == out_c, "Conv bias of {} values for {out_c} channels", bias.len());
        let strides = spec.strides.clone().unwrap_or_else(|| tvec![1, 1]);
        let (ih, iw) = spatial(fmt, &a.dims)?;
        let (padding, explicit) = padding(&spec.padding, (ih, iw), (kh, kw), (strides[0], strides[1]))?;
        let mut input = a.tensor;
        if let Some(pads) = explicit {
            input = self.push(FloatOp::Pad { pads }, vec![input], &format!("{name}_pad"));
        }
        let op = FloatOp::Conv { weights_oihw, bias, in_c, out_c, groups: group, kernel: (kh, kw), stride: (strides[0], strides[1]), padding, act: Act::None };
        let t = self.push(op, vec![input], name);
        Ok(Value::Act(Act4 { tensor: t, table: format_table(fmt, &out_dims).context("conv output")?, dims: out_dims }))
    }

    fn pool(&mut self, spec: &PoolSpec, max: bool, input: OutletId, out_dims: Vec<usize>, name: &str) -> Result<Value> {
        let a = self.act(input)?;
        let fmt = spec.data_format;
        expect_format(&a, fmt, "pooling")?;
        let (ih, iw) = spatial(fmt, &a.dims)?;
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let strides = spec.strides.clone().unwrap_or_else(|| tvec![1, 1]);
        let (padding, explicit) = padding(&spec.padding, (ih, iw), (kh, kw), (strides[0], strides[1]))?;
        ensure!(explicit.is_none(), "pooling with padding that is neither VALID nor SAME");
        let t = self.push(FloatOp::Pool { max, kernel: (kh, kw), stride: (strides[0], strides[1]), padding }, vec![a.tensor], name);
        Ok(Value::Act(Act4 { tensor: t, table: format_table(fmt, &out_dims).context("pool output")?, dims: out_dims }))
    }

    /// Global average pooling as tract writes it: a sum over H and W (then a product by 1/(HW)).
    fn reduce(&mut self, r: &Reduce, input: OutletId, out_dims: Vec<usize>, name: &str) -> Result<Value> {
        let a = self.act(input)?;
        ensure!(matches!(r.reducer, Reducer::Sum), "reduction {:?}", r.reducer);
        let mut axes = r.axes.to_vec();
        axes.sort_unstable();
        let fmt = match (a.dims.len(), axes.as_slice()) {
            (4, [2, 3]) => DataFormat::NCHW,
            (4, [1, 2]) => DataFormat::NHWC,
            (3, [1, 2]) => DataFormat::CHW,
            (3, [0, 1]) => DataFormat::HWC,
            _ => bail!("a reduction over axes {axes:?} of a rank-{} tensor (only global pooling)", a.dims.len()),
        };
        expect_format(&a, fmt, "a global pool")?;
        let (h, w) = spatial(fmt, &a.dims)?;
        let t = self.push(FloatOp::Pool { max: false, kernel: (h, w), stride: (h, w), padding: Padding::Valid }, vec![a.tensor], name);
        // The pool averages; the sum it stands for is `h * w` times larger, which the product by
        // 1/(HW) that follows undoes (see `binary`).
        self.pending_sums.insert(t, h * w);
        Ok(Value::Act(Act4 { tensor: t, table: format_table(fmt, &out_dims).context("reduce output")?, dims: out_dims }))
    }

    fn binary(&mut self, op: &str, inputs: &[OutletId], out_dims: Vec<usize>, name: &str) -> Result<Value> {
        let (x, k) = match (self.values.get(&inputs[0]).cloned(), self.values.get(&inputs[1]).cloned()) {
            (Some(Value::Act(a)), Some(Value::Const(k))) => ((a, inputs[0]), k),
            (Some(Value::Const(k)), Some(Value::Act(a))) if op != "Sub" && op != "Div" => ((a, inputs[1]), k),
            (Some(Value::Act(a)), Some(Value::Act(b))) => {
                ensure!(op == "Add", "{op} of two computed tensors is not supported (only Add)");
                ensure!(a.table == b.table && a.dims == b.dims, "Add of tensors of different shapes or layouts (no broadcasting)");
                let t = self.push(FloatOp::Add { act: Act::None }, vec![a.tensor, b.tensor], name);
                return Ok(Value::Act(Act4 { tensor: t, dims: out_dims, table: a.table }));
            }
            _ => bail!("{op} of constants"),
        };
        let ((a, outlet), k) = (x, Self::floats(&k)?);
        ensure!(a.dims == out_dims, "{op} with a constant that broadcasts the tensor to another shape");
        if let Some(n) = self.pending_sums.remove(&a.tensor) {
            // The product by 1/(HW) after a global sum: the pool already averages.
            ensure!(op == "Mul" && k.len() == 1 && (k[0] as f64 * n as f64 - 1.0).abs() < 1e-6, "a global sum not followed by its mean's 1/n");
            return Ok(Value::Act(a));
        }
        let is_zero = |v: &[f32]| v.iter().all(|&x| x == 0.0);
        let is_six = |v: &[f32]| v.iter().all(|&x| x == 6.0);
        match op {
            "Max" if is_zero(&k) => self.activation(a, outlet, Act::Relu, "Relu"),
            "Min" if is_six(&k) => self.activation(a, outlet, Act::Relu6, "Clip to [0, 6]"),
            "Mul" | "Add" | "Sub" | "Div" => self.affine(op, a, outlet, &k),
            _ => bail!("{op} with a constant is not supported"),
        }
    }

    /// A ReLU or ReLU6 fused into the layer that wrote `a`.
    fn activation(&mut self, a: Act4, outlet: OutletId, act: Act, what: &str) -> Result<Value> {
        let slot = match self.fusable(outlet, a.tensor) {
            Some(FloatOp::Conv { act, .. }) | Some(FloatOp::Dense { act, .. }) | Some(FloatOp::Add { act }) => act,
            _ => bail!("{what} that does not follow a Conv, Gemm or Add with no other reader"),
        };
        *slot = match (*slot, act) {
            (Act::None, a) => a,
            (Act::Relu, Act::Relu6) => Act::Relu6,
            (Act::Relu, Act::Relu) => Act::Relu,
            (Act::Relu6, _) => Act::Relu6,
            (_, _) => bail!("{what} after another activation"),
        };
        Ok(Value::Act(a))
    }

    /// A per-channel affine op (BatchNormalization, a bias) folded into the conv or dense layer
    /// that wrote `a`: `y = x * s` scales its weights and bias, `y = x + b` adds to its bias.
    fn affine(&mut self, op: &str, a: Act4, outlet: OutletId, k: &[f32]) -> Result<Value> {
        let channels = match self.layers.get(a.tensor.wrapping_sub(1)).map(|l| &l.op) {
            Some(FloatOp::Conv { out_c, .. }) => *out_c,
            Some(FloatOp::Dense { outputs, .. }) => *outputs,
            _ => 0,
        };
        // The constant's value for each output channel (NCHW: axis 1; a vector: its last axis).
        let per_channel: Vec<f32> = match k.len() {
            1 => vec![k[0]; channels],
            n if n == channels => k.to_vec(),
            n => bail!("{op} by a constant of {n} values that is not per channel"),
        };
        let target = self.fusable(outlet, a.tensor).with_context(|| format!("{op} by a constant that does not follow a Conv or Gemm with no other reader"))?;
        let (weights, bias, act, per_out) = match target {
            FloatOp::Conv { weights_oihw, bias, act, out_c, .. } => {
                let per = weights_oihw.len() / *out_c;
                (weights_oihw, bias, act, per)
            }
            FloatOp::Dense { weights_out_in, bias, act, inputs, .. } => {
                let per = *inputs;
                (weights_out_in, bias, act, per)
            }
            _ => bail!("{op} by a constant that does not follow a Conv or Gemm"),
        };
        ensure!(*act == Act::None, "{op} by a constant after an activation");
        for (c, &v) in per_channel.iter().enumerate() {
            match op {
                "Mul" | "Div" => {
                    let s = if op == "Mul" { v } else { 1.0 / v };
                    for w in &mut weights[c * per_out..(c + 1) * per_out] {
                        *w *= s;
                    }
                    bias[c] *= s;
                }
                "Add" => bias[c] += v,
                _ => bias[c] -= v,
            }
        }
        Ok(Value::Act(a))
    }

    /// A 1x1 convolution that tract wrote as an einsum with weights `[O, I]` (or `[I, O]`).
    #[allow(clippy::too_many_arguments)]
    fn pointwise(&mut self, x: &Act4, fmt: DataFormat, (lx, lw, lo): (&[char], &[char], &[char]), wd: &[usize], wv: &[f32], out_dims: Vec<usize>, name: &str) -> Result<Value> {
        expect_format(x, fmt, "a pointwise conv")?;
        let i_label = *lx.iter().find(|l| lw.contains(l) && !lo.contains(l)).context("einsum channel axis")?;
        let o_label = *lw.iter().find(|l| lo.contains(l) && !lx.contains(l)).context("einsum output axis")?;
        let (ia, oa) = (lw.iter().position(|l| *l == i_label).unwrap_or(0), lw.iter().position(|l| *l == o_label).unwrap_or(0));
        let (in_c, out_c) = (wd[ia], wd[oa]);
        // The spatial axes: the input's kept axes, in the input's (height, width) order.
        let (ih, iw) = spatial(fmt, &x.dims)?;
        let kept: Vec<char> = lx.iter().copied().filter(|l| lo.contains(l) && !lw.contains(l)).filter(|l| x.dims[lx.iter().position(|c| c == l).unwrap_or(0)] > 1 || (ih == 1 || iw == 1)).collect();
        let (hl, wl) = match kept.as_slice() {
            [h, w] => (*h, *w),
            [.., h, w] => (*h, *w),
            _ => bail!("a pointwise conv without two spatial axes"),
        };
        // Lepton stores the output (h, w, o): the table follows the output's own axis order.
        let pos = |l: char| lo.iter().position(|c| *c == l);
        let (ph, pw, po) = (pos(hl).context("height axis")?, pos(wl).context("width axis")?, pos(o_label).context("channel axis")?);
        let table: Vec<usize> = (0..volume(&out_dims))
            .map(|flat| {
                let mut f = flat;
                let mut idx = vec![0; out_dims.len()];
                for (i, &d) in out_dims.iter().enumerate().rev() {
                    idx[i] = f % d.max(1);
                    f /= d.max(1);
                }
                (idx[ph] * out_dims[pw] + idx[pw]) * out_c + idx[po]
            })
            .collect();
        let mut weights_oihw = vec![0.0f32; out_c * in_c];
        for o in 0..out_c {
            for i in 0..in_c {
                let at = if ia == 0 { i * out_c + o } else { o * in_c + i };
                weights_oihw[o * in_c + i] = wv[at];
            }
        }
        let op = FloatOp::Conv { weights_oihw, bias: vec![0.0; out_c], in_c, out_c, groups: 1, kernel: (1, 1), stride: (1, 1), padding: Padding::Valid, act: Act::None };
        let t = self.push(op, vec![x.tensor], name);
        Ok(Value::Act(Act4 { tensor: t, table, dims: out_dims }))
    }

    /// A product with a constant matrix (Gemm, MatMul, a decluttered flatten + Gemm) as a dense
    /// layer, its weights read through the input's table.
    fn einsum(&mut self, expr: &str, inputs: &[OutletId], out_dims: Vec<usize>, name: &str) -> Result<Value> {
        ensure!(inputs.len() == 2, "einsum of {} inputs", inputs.len());
        let (lhs, out) = expr.split_once("->").context("einsum expression")?;
        let (e0, e1) = lhs.split_once(',').context("einsum expression")?;
        let (x, w, ex, ew) = match (self.values.get(&inputs[0]).cloned(), self.values.get(&inputs[1]).cloned()) {
            (Some(Value::Act(x)), Some(Value::Const(w))) => (x, w, e0, e1),
            (Some(Value::Const(w)), Some(Value::Act(x))) => (x, w, e1, e0),
            _ => bail!("a product of two computed tensors (only products with constant weights are supported)"),
        };
        let wd = w.shape().to_vec();
        let wv = Self::floats(&w)?;
        let (lx, lw, lo): (Vec<char>, Vec<char>, Vec<char>) = (ex.chars().collect(), ew.chars().collect(), out.chars().collect());
        ensure!(lx.len() == x.dims.len() && lw.len() == wd.len() && lo.len() == out_dims.len(), "einsum {expr} does not match its shapes");
        if let Some(fmt) = is_pointwise(expr) {
            return self.pointwise(&x, fmt, (&lx, &lw, &lo), &wd, &wv, out_dims, name);
        }
        ensure!(lw.iter().all(|l| lx.contains(l) || lo.contains(l)), "einsum {expr}: a weight axis that is neither summed nor kept");
        ensure!(
            lx.iter().enumerate().all(|(p, l)| lw.contains(l) || (lo.contains(l) && x.dims[p] == 1) || x.dims[p] == 1),
            "einsum {expr}: an input axis neither summed with weights nor of size 1"
        );
        let inputs_n = volume(&x.dims);
        let outputs = volume(&out_dims);
        let mut weights = vec![0.0f32; outputs * inputs_n];
        let index = |dims: &[usize], flat: usize| -> Vec<usize> {
            let mut idx = vec![0; dims.len()];
            let mut f = flat;
            for (i, &d) in dims.iter().enumerate().rev() {
                idx[i] = f % d.max(1);
                f /= d.max(1);
            }
            idx
        };
        for o in 0..outputs {
            let oi = index(&out_dims, o);
            'x: for xf in 0..inputs_n {
                let xi = index(&x.dims, xf);
                let mut wf = 0;
                for (axis, l) in lw.iter().enumerate() {
                    let v = match (lx.iter().position(|c| c == l), lo.iter().position(|c| c == l)) {
                        (Some(p), Some(q)) if xi[p] != oi[q] => continue 'x,
                        (Some(p), _) => xi[p],
                        (None, Some(q)) => oi[q],
                        (None, None) => 0,
                    };
                    wf = wf * wd[axis] + v;
                }
                // Axes of the input and the output but not the weights (the batch, size 1).
                for (p, l) in lx.iter().enumerate() {
                    if let Some(q) = lo.iter().position(|c| c == l) {
                        if !lw.contains(l) && xi[p] != oi[q] {
                            continue 'x;
                        }
                    }
                }
                weights[o * inputs_n + x.table[xf]] = wv[wf];
            }
        }
        let t = self.push(FloatOp::Dense { weights_out_in: weights, bias: vec![0.0; outputs], inputs: inputs_n, outputs, act: Act::None }, vec![x.tensor], name);
        Ok(Value::Act(Act4 { tensor: t, dims: out_dims, table: identity(outputs) }))
    }
}

/// The data format of a 1x1 convolution written as an einsum (`NIHW,OI->NOHW` and the like:
/// two spatial axes kept from the input, one channel axis summed), if `expr` is one.
fn is_pointwise(expr: &str) -> Option<DataFormat> {
    let (lhs, out) = expr.split_once("->")?;
    let (x, w) = lhs.split_once(',')?;
    let (x, w, out): (Vec<char>, Vec<char>, Vec<char>) = (x.chars().collect(), w.chars().collect(), out.chars().collect());
    let kept: Vec<char> = x.iter().copied().filter(|l| out.contains(l) && !w.contains(l)).collect();
    let summed: Vec<char> = x.iter().copied().filter(|l| w.contains(l) && !out.contains(l)).collect();
    let new: Vec<char> = w.iter().copied().filter(|l| out.contains(l) && !x.contains(l)).collect();
    if summed.len() != 1 || new.len() != 1 || kept.len() < 2 || w.len() != 2 {
        return None;
    }
    let channel = x.iter().position(|l| *l == summed[0])?;
    Some(match (x.len(), channel) {
        (4, 1) => DataFormat::NCHW,
        (4, 3) => DataFormat::NHWC,
        (3, 0) => DataFormat::CHW,
        (3, 2) => DataFormat::HWC,
        _ => return None,
    })
}

/// The table after moving fact axis `from` to position `to`.
fn permuted(dims: &[usize], table: &[usize], from: usize, to: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..dims.len()).collect();
    let axis = order.remove(from);
    order.insert(to, axis);
    let new_dims: Vec<usize> = order.iter().map(|&a| dims[a]).collect();
    let mut out = vec![0; table.len()];
    for (flat, o) in out.iter_mut().enumerate() {
        let mut f = flat;
        let mut idx = vec![0; dims.len()];
        for i in (0..new_dims.len()).rev() {
            idx[order[i]] = f % new_dims[i].max(1);
            f /= new_dims[i].max(1);
        }
        let old = idx.iter().zip(dims).fold(0, |acc, (&i, &d)| acc * d + i);
        *o = table[old];
    }
    out
}

/// Conv weights in OIHW order from tract's kernel format.
fn oihw(w: &[f32], fmt: KernelFormat, o: usize, i: usize, kh: usize, kw: usize) -> Result<Vec<f32>> {
    ensure!(w.len() == o * i * kh * kw, "Conv weights hold {} values, expected {}", w.len(), o * i * kh * kw);
    let at = |oo: usize, ii: usize, y: usize, x: usize| match fmt {
        KernelFormat::OIHW => ((oo * i + ii) * kh + y) * kw + x,
        KernelFormat::HWIO => ((y * kw + x) * i + ii) * o + oo,
        KernelFormat::OHWI => ((oo * kh + y) * kw + x) * i + ii,
    };
    let mut out = Vec::with_capacity(w.len());
    for oo in 0..o {
        for ii in 0..i {
            for y in 0..kh {
                for x in 0..kw {
                    out.push(w[at(oo, ii, y, x)]);
                }
            }
        }
    }
    Ok(out)
}

/// Lepton's padding for tract's: VALID, SAME (TFLite's: the odd pixel at the bottom/right), or
/// explicit pads that are neither (then a Pad before a VALID window: `[top, bottom, left, right]`).
fn padding(spec: &PaddingSpec, input: (usize, usize), k: (usize, usize), s: (usize, usize)) -> Result<(Padding, Option<[usize; 4]>)> {
    let same = |n: usize, k: usize, s: usize| {
        let out = n.div_ceil(s);
        let total = ((out - 1) * s + k).saturating_sub(n);
        (total / 2, total - total / 2)
    };
    let ((t, b), (l, r)) = (same(input.0, k.0, s.0), same(input.1, k.1, s.1));
    let explicit = |before: &[usize], after: &[usize]| -> Result<(Padding, Option<[usize; 4]>)> {
        ensure!(before.len() == 2 && after.len() == 2, "padding of {} axes", before.len());
        if before.iter().chain(after).all(|&p| p == 0) {
            Ok((Padding::Valid, None))
        } else if before == [t, l] && after == [b, r] {
            Ok((Padding::Same, None))
        } else {
            Ok((Padding::Valid, Some([before[0], after[0], before[1], after[1]])))
        }
    };
    match spec {
        PaddingSpec::Valid => Ok((Padding::Valid, None)),
        PaddingSpec::SameUpper => Ok((Padding::Same, None)),
        PaddingSpec::Explicit(before, after) => explicit(before, after),
        PaddingSpec::ExplicitOnnxPool(before, after, ceil) => {
            ensure!(!ceil, "pooling with ceil_mode");
            explicit(before, after)
        }
        PaddingSpec::SameLower => {
            if (t, l) == (b, r) {
                Ok((Padding::Same, None))
            } else {
                Ok((Padding::Valid, Some([b, t, r, l])))
            }
        }
    }
}
