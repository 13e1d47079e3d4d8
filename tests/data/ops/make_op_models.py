"""Build small single-purpose int8 TFLite models for operators/configurations that the MLPerf Tiny
models do not exercise, and their TensorFlow Lite Micro reference vectors.

usage: python make_op_models.py OUTDIR
needs: numpy, tflite (flatbuffer reader), tflite-micro (Python runtime, schema object API, flatbuffers)

For each model NAME it writes OUTDIR/NAME.tflite, NAME.inputs.npy, NAME.logits.npy, NAME.outputs.npy.
Vectors follow /work/shared/mlperf-tiny/vectors/gen_tflm_vectors.py: inputs are a third uniform int8 noise,
a third smoothed noise over the full range, a third sparse at the input zero point; logits = the input tensor
of a final SOFTMAX (read after invoke with kPreserveAllTensors), else the output; outputs = output 0.

Models are built like a post-training-quantized converter output: schema v3, one subgraph, int8 input and
output (no QUANTIZE/DEQUANTIZE), per-tensor asymmetric int8 activations whose scale/zero point come from a
float64 calibration pass (min/max over 48 calibration inputs, scale rounded to 4 significant digits),
per-channel symmetric int8 conv/depthwise weights (quantized_dimension 0 for CONV_2D OHWI, 3 for
DEPTHWISE_CONV_2D 1HW(C*dm)), per-tensor symmetric FC weights, int32 biases with scale
f32(in_scale*w_scale[c]) and zp 0. Constant buffers are 16-byte aligned in the file.
"""
import math, os, sys, zlib
import numpy as np
import flatbuffers
import tflite
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as S
from tflite_micro.python.tflite_micro import runtime

MODEL_SEED = 20240607     # weights, biases, calibration inputs: default_rng(MODEL_SEED + crc32(model family))
VECTOR_SEED = 1234        # test inputs: default_rng(VECTOR_SEED + crc32(NAME))
N_VECTORS = 16
N_CALIB = 48

BO = S.BuiltinOperator
ACT = {'NONE': 0, 'RELU': 1, 'RELU_N1_TO_1': 2, 'RELU6': 3}
PAD = {'SAME': 0, 'VALID': 1}
# operator versions as the TF converter writes them for int8 (matches the MLPerf Tiny models where they overlap)
VERSION = {BO.CONV_2D: 3, BO.DEPTHWISE_CONV_2D: 3, BO.FULLY_CONNECTED: 4, BO.ADD: 2, BO.AVERAGE_POOL_2D: 2,
           BO.MAX_POOL_2D: 2, BO.RESHAPE: 1, BO.SOFTMAX: 2, BO.PAD: 2, BO.MEAN: 2}


# ----------------------------------------------------------------------------------------------------------
# inputs exactly as gen_tflm_vectors.py
def inputs_for(shape, zp, n, rng):
    shape = tuple(int(s) for s in shape[1:])
    out = np.empty((n,) + shape, np.int8)
    for i in range(n):
        kind = i % 3
        if kind == 0:
            x = rng.integers(-128, 128, size=shape)
        elif kind == 1:
            x = rng.normal(size=shape)
            for ax in range(len(shape)):
                if shape[ax] > 2:
                    x = (x + np.roll(x, 1, ax) + np.roll(x, -1, ax)) / 3
            x = (x - x.min()) / (np.ptp(x) + 1e-9) * 255 - 128
        else:
            x = np.full(shape, zp)
            mask = rng.random(shape) < 0.1
            x[mask] = rng.integers(-128, 128, size=int(mask.sum()))
        out[i] = np.clip(np.rint(x), -128, 127).astype(np.int8)
    return out


def logits_index(path):
    m = tflite.Model.GetRootAsModel(open(path, "rb").read(), 0)
    g = m.Subgraphs(0)
    last = g.Operators(g.OperatorsLength() - 1)
    code = m.OperatorCodes(last.OpcodeIndex())
    is_softmax = max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == 25
    return last.Inputs(0) if is_softmax else None


def min_arena(path):
    """smallest arena (bytes) with which the model allocates and invokes (plain, without kPreserveAllTensors).
    Each probe runs in a child process: this TFLM build sometimes segfaults, instead of failing cleanly, when
    the arena is a little too small (e.g. conv_same_s2 at 1520..1584 bytes)."""
    import subprocess
    code = ("import sys\nfrom tflite_micro.python.tflite_micro import runtime\n"
            "it = runtime.Interpreter.from_file(sys.argv[1], arena_size=int(sys.argv[2])); it.invoke()")

    def ok(n):
        return subprocess.run([sys.executable, '-c', code, path, str(n)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0
    lo, hi = 1024, 1 << 20
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


# ----------------------------------------------------------------------------------------------------------
# float64 reference ops (calibration only), NHWC with a leading calibration-batch dim
def padding(pad, stride, in_size, k):
    out = (in_size + stride - 1) // stride if pad == 'SAME' else (in_size + stride - k) // stride
    total = max((out - 1) * stride + k - in_size, 0)
    return out, total // 2                       # TFLite: extra row/col goes bottom/right


def f_window(x, kh, kw, stride, pad, fill):
    """yields (ky, kx, patch[N,OH,OW,C]) with out-of-image taps = fill"""
    N, H, W, C = x.shape
    OH, pt = padding(pad, stride, H, kh)
    OW, pl = padding(pad, stride, W, kw)
    xp = np.full((N, (OH - 1) * stride + kh + H, (OW - 1) * stride + kw + W, C), fill, np.float64)
    xp[:, pt:pt + H, pl:pl + W] = x
    for ky in range(kh):
        for kx in range(kw):
            yield ky, kx, xp[:, ky:ky + (OH - 1) * stride + 1:stride, kx:kx + (OW - 1) * stride + 1:stride]


def f_conv(x, w, b, stride, pad):            # w [O,KH,KW,I]
    acc = 0
    for ky, kx, p in f_window(x, w.shape[1], w.shape[2], stride, pad, 0.0):
        acc = acc + p @ w[:, ky, kx, :].T
    return acc + b


def f_dwconv(x, w, b, stride, pad, dm):      # w [1,KH,KW,C*dm], out channel oc reads input channel oc // dm
    acc = 0
    for ky, kx, p in f_window(x, w.shape[1], w.shape[2], stride, pad, 0.0):
        acc = acc + np.repeat(p, dm, axis=3) * w[0, ky, kx, :]
    return acc + b


def f_pool(x, k, stride, pad, kind):
    if kind == 'MAX':
        return np.max(np.stack([p for _, _, p in f_window(x, k, k, stride, pad, -np.inf)]), axis=0)
    s = sum(p for _, _, p in f_window(x, k, k, stride, pad, 0.0))
    cnt = sum(p for _, _, p in f_window(np.ones_like(x[:1]), k, k, stride, pad, 0.0))   # in-bounds taps only
    return s / cnt


def f_act(y, act):
    if act == 'RELU':
        return np.maximum(y, 0)
    if act == 'RELU6':
        return np.clip(y, 0, 6)
    return y


# ----------------------------------------------------------------------------------------------------------
def qparams(lo, hi):
    """asymmetric int8 (TF style): range widened to contain 0, scale rounded to 4 significant digits"""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = float('%.4g' % ((hi - lo) / 255.0))
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return float(np.float32(scale)), zp


def eff_check(what, in_s, w_s, out_s):
    eff = float(np.float32(in_s)) * np.asarray(w_s, np.float32).astype(np.float64) / float(np.float32(out_s))
    assert np.all(eff < 0.5) and np.all(eff > 2.0 ** -31), (what, eff)   # QuantizeMultiplier exponent <= -1
    return eff


class Net:
    def __init__(self, name, family, in_shape, in_scale, in_zp):
        self.name = name
        self.rng = np.random.default_rng(MODEL_SEED + zlib.crc32(family.encode()))
        self.tensors, self.buffers, self.ops, self.codes = [], [S.BufferT()], [], {}
        self.val, self.q, self.log = {}, {}, []
        cal = inputs_for([1] + in_shape, in_zp, N_CALIB, self.rng)
        self.input = self.act('input', [1] + in_shape, (cal.astype(np.float64) - in_zp) * np.float32(in_scale),
                              (in_scale, in_zp))

    # --- flatbuffer pieces
    def tensor(self, name, shape, dtype, data=None, scale=None, zp=None, qdim=0):
        t = S.TensorT()
        t.name, t.shape = name, [int(s) for s in shape]
        t.type = {'int8': S.TensorType.INT8, 'int32': S.TensorType.INT32}[dtype]
        t.buffer = 0
        if data is not None:
            b = S.BufferT()
            b.data = np.ascontiguousarray(data, {'int8': np.int8, 'int32': np.int32}[dtype]).tobytes()
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        if scale is not None:
            q = S.QuantizationParametersT()
            q.scale = [float(s) for s in np.atleast_1d(np.asarray(scale, np.float32))]
            q.zeroPoint = [int(z) for z in np.atleast_1d(zp)]
            q.quantizedDimension = qdim
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def act(self, name, shape, value, q):
        i = self.tensor(name, shape, 'int8', scale=q[0], zp=q[1])
        self.val[i], self.q[i] = value, (float(np.float32(q[0])), int(q[1]))
        return i

    def op(self, code, ins, outs, opt_type=0, opt=None):
        if code not in self.codes:
            c = S.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), VERSION[code]
            self.codes[code] = (len(self.codes), c)
        o = S.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes[code][0], list(ins), list(outs)
        o.builtinOptionsType, o.builtinOptions = opt_type, opt
        self.ops.append(o)

    def out_q(self, y, out_range):
        return qparams(*(out_range if out_range is not None else (y.min(), y.max())))

    # --- layers
    def conv(self, x, oc, k, stride, pad, act, name, dw=False, dm=1, out_range=None, gain=1.0):
        v, (in_s, in_zp) = self.val[x], self.q[x]
        C = v.shape[-1]
        if dw:
            OC, wshape, fan_in, qdim = C * dm, [1, k, k, C * dm], k * k, 3
        else:
            OC, wshape, fan_in, qdim = oc, [oc, k, k, C], k * k * C, 0
        bshape = [1, 1, 1, OC] if dw else [OC, 1, 1, 1]
        wf = gain * self.rng.normal(0, math.sqrt(2.0 / fan_in), wshape) * self.rng.uniform(0.4, 1.6, OC).reshape(bshape)
        ws = (np.abs(wf).max(axis=(0, 1, 2) if dw else (1, 2, 3)) / 127).astype(np.float32)
        wq = np.clip(np.rint(wf / ws.reshape(bshape)), -127, 127).astype(np.int8)
        bs = (np.float32(in_s) * ws).astype(np.float32)
        bq = np.rint(self.rng.normal(0, 0.25, OC) / bs).astype(np.int32)
        wd, bd = wq * ws.astype(np.float64).reshape(bshape), bq * bs.astype(np.float64)
        y = f_dwconv(v, wd, bd, stride, pad, dm) if dw else f_conv(v, wd, bd, stride, pad)
        y = f_act(y, act)
        oq = self.out_q(y, out_range)
        eff_check(name, in_s, ws, oq[0])
        wt = self.tensor(name + '/weights', wshape, 'int8', wq, ws, np.zeros(OC, int), qdim)
        bt = self.tensor(name + '/bias', [OC], 'int32', bq, bs, np.zeros(OC, int))
        o = self.act(name, [1] + list(y.shape[1:]), y, oq)
        if dw:
            opt = S.DepthwiseConv2DOptionsT(); opt.depthMultiplier = dm
            code, ot = BO.DEPTHWISE_CONV_2D, S.BuiltinOptions.DepthwiseConv2DOptions
        else:
            opt = S.Conv2DOptionsT()
            code, ot = BO.CONV_2D, S.BuiltinOptions.Conv2DOptions
        opt.padding, opt.strideH, opt.strideW, opt.fusedActivationFunction = PAD[pad], stride, stride, ACT[act]
        self.op(code, [x, wt, bt], [o], ot, opt)
        self.log.append(f"{'DEPTHWISE_CONV_2D' if dw else 'CONV_2D'} {self.shape(x)} -> {self.shape(o)} "
                        f"k{k}x{k} {pad} s{stride}{' dm=%d' % dm if dw else ''} act={act}")
        return o

    def fc(self, x, n_out, name):
        v, (in_s, in_zp) = self.val[x], self.q[x]
        vi = v.reshape(len(v), -1)
        D = vi.shape[1]
        wf = self.rng.normal(0, math.sqrt(1.0 / D), (n_out, D))
        ws = np.float32(np.abs(wf).max() / 127)
        wq = np.clip(np.rint(wf / ws), -127, 127).astype(np.int8)
        bs = np.float32(np.float32(in_s) * ws)
        bq = np.rint(self.rng.normal(0, 0.25, n_out) / bs).astype(np.int32)
        y = vi @ (wq * float(ws)).T + bq * float(bs)
        oq = self.out_q(y, None)
        eff_check(name, in_s, [ws], oq[0])
        wt = self.tensor(name + '/weights', [n_out, D], 'int8', wq, ws, 0)
        bt = self.tensor(name + '/bias', [n_out], 'int32', bq, bs, 0)
        o = self.act(name, [1, n_out], y, oq)
        self.op(BO.FULLY_CONNECTED, [x, wt, bt], [o], S.BuiltinOptions.FullyConnectedOptions, S.FullyConnectedOptionsT())
        self.log.append(f"FULLY_CONNECTED {self.shape(x)} -> {self.shape(o)} per-tensor weights [{n_out},{D}]")
        return o

    def pad(self, x, pads, name):
        v = self.val[x]
        y = np.pad(v, [(0, 0)] + [tuple(p) for p in pads[1:]])        # real 0 == zero point
        pt = self.tensor(name + '/paddings', [4, 2], 'int32', np.array(pads, np.int32))
        o = self.act(name, [1] + list(y.shape[1:]), y, self.q[x])
        self.op(BO.PAD, [x, pt], [o], S.BuiltinOptions.PadOptions, S.PadOptionsT())
        self.log.append(f"PAD {self.shape(x)} -> {self.shape(o)} paddings {pads} (pad value = zp {self.q[x][1]})")
        return o

    def pool(self, x, kind, k, stride, pad, name):
        y = f_pool(self.val[x], k, stride, pad, kind)
        o = self.act(name, [1] + list(y.shape[1:]), y, self.q[x])    # TFLM pools do not requantize
        opt = S.Pool2DOptionsT()
        opt.padding, opt.strideH, opt.strideW, opt.filterHeight, opt.filterWidth = PAD[pad], stride, stride, k, k
        self.op(BO.MAX_POOL_2D if kind == 'MAX' else BO.AVERAGE_POOL_2D, [x], [o], S.BuiltinOptions.Pool2DOptions, opt)
        self.log.append(f"{kind}_POOL_2D {self.shape(x)} -> {self.shape(o)} {k}x{k} s{stride} {pad}")
        return o

    def mean(self, x, keep, name):
        y = self.val[x].mean(axis=(1, 2), keepdims=keep)
        oq = self.out_q(y, None)
        assert oq != self.q[x]
        at = self.tensor(name + '/axes', [2], 'int32', np.array([1, 2], np.int32))
        o = self.act(name, [1] + list(y.shape[1:]), y, oq)
        opt = S.ReducerOptionsT(); opt.keepDims = keep
        self.op(BO.MEAN, [x, at], [o], S.BuiltinOptions.ReducerOptions, opt)
        self.log.append(f"MEAN {self.shape(x)} -> {self.shape(o)} axes [1,2] keep_dims={keep}")
        return o

    def add(self, a, b, act, name, out_range=None):
        y = f_act(self.val[a] + self.val[b], act)
        o = self.act(name, [1] + list(y.shape[1:]), y, self.out_q(y, out_range))
        opt = S.AddOptionsT(); opt.fusedActivationFunction = ACT[act]
        self.op(BO.ADD, [a, b], [o], S.BuiltinOptions.AddOptions, opt)
        self.log.append(f"ADD {self.shape(a)} + {self.shape(b)} -> {self.shape(o)} act={act}")
        return o

    def reshape(self, x, name):
        v = self.val[x]
        n = int(np.prod(v.shape[1:]))
        st = self.tensor(name + '/shape', [2], 'int32', np.array([-1, n], np.int32))
        o = self.act(name, [1, n], v.reshape(len(v), n), self.q[x])
        self.op(BO.RESHAPE, [x, st], [o])          # shape tensor [-1, N], no ReshapeOptions (as in MLPerf Tiny)
        self.log.append(f"RESHAPE {self.shape(x)} -> {self.shape(o)}")
        return o

    def softmax(self, x, name):
        v = self.val[x]
        e = np.exp(v - v.max(axis=1, keepdims=True))
        o = self.act(name, self.shape(x), e / e.sum(axis=1, keepdims=True), (1.0 / 256, -128))
        opt = S.SoftmaxOptionsT(); opt.beta = 1.0
        self.op(BO.SOFTMAX, [x], [o], S.BuiltinOptions.SoftmaxOptions, opt)
        self.log.append(f"SOFTMAX {self.shape(x)} -> {self.shape(o)} beta=1")
        return o

    def shape(self, t):
        return list(self.tensors[t].shape)

    # --- serialize
    def build(self, out):
        g = S.SubGraphT()
        g.tensors, g.operators, g.inputs, g.outputs, g.name = self.tensors, self.ops, [self.input], [out], 'main'
        m = S.ModelT()
        m.version, m.subgraphs, m.description = 3, [g], 'Lepton op test model (tests/data/ops/make_op_models.py)'
        m.operatorCodes = [c for _, c in sorted(self.codes.values(), key=lambda v: v[0])]
        m.buffers = []
        fb = flatbuffers.Builder(4096)
        # pre-pack constant data 16-byte aligned (the object API would align it to 1)
        offs = []
        for b in self.buffers:
            if b.data is None:
                offs.append(None)
                continue
            n = len(b.data)
            fb.StartVector(1, n, 16)
            fb.head -= n
            fb.Bytes[fb.head:fb.head + n] = b.data
            offs.append(fb.EndVector())
        boffs = []
        for off in offs:
            S.BufferStart(fb)
            if off is not None:
                S.BufferAddData(fb, off)
            boffs.append(S.BufferEnd(fb))
        m.buffers = None
        # pack the model without buffers, then splice the buffers vector in
        root = pack_model_with_buffers(m, fb, boffs)
        fb.Finish(root, file_identifier=b"TFL3")
        return bytes(fb.Output())


def pack_model_with_buffers(m, fb, boffs):
    """ModelT.Pack with a pre-built buffers vector"""
    codes = [c.Pack(fb) for c in m.operatorCodes]
    S.ModelStartOperatorCodesVector(fb, len(codes))
    for c in reversed(codes):
        fb.PrependUOffsetTRelative(c)
    codes_v = fb.EndVector()
    subs = [s.Pack(fb) for s in m.subgraphs]
    S.ModelStartSubgraphsVector(fb, len(subs))
    for s in reversed(subs):
        fb.PrependUOffsetTRelative(s)
    subs_v = fb.EndVector()
    desc = fb.CreateString(m.description)
    S.ModelStartBuffersVector(fb, len(boffs))
    for b in reversed(boffs):
        fb.PrependUOffsetTRelative(b)
    bufs_v = fb.EndVector()
    S.ModelStart(fb)
    S.ModelAddVersion(fb, m.version)
    S.ModelAddOperatorCodes(fb, codes_v)
    S.ModelAddSubgraphs(fb, subs_v)
    S.ModelAddDescription(fb, desc)
    S.ModelAddBuffers(fb, bufs_v)
    return S.ModelEnd(fb)


# ----------------------------------------------------------------------------------------------------------
# the models
def conv_same_s2():
    n = Net('conv_same_s2', 'conv_same_s2', [9, 7, 3], 0.02156, 9)
    # RELU6 output range deliberately [-0.75, 6.9] (zp -103): both ends of the fused clamp bind ([-103, 97]);
    # weights x2 so that pre-activations above 6 are common
    x = n.conv(n.input, 8, 3, 2, 'SAME', 'RELU6', 'conv1', out_range=(-0.75, 6.9), gain=2.0)
    x = n.conv(x, 4, 1, 1, 'VALID', 'NONE', 'conv2')
    return n, x


def dw_mult2():
    n = Net('dw_mult2', 'dw_mult2', [8, 8, 4], 0.0309, -14)
    x = n.conv(n.input, None, 3, 2, 'SAME', 'RELU', 'dw1', dw=True, dm=2)
    x = n.conv(x, None, 3, 1, 'VALID', 'NONE', 'dw2', dw=True, dm=1)
    return n, x


def pad_conv():
    n = Net('pad_conv', 'pad_conv', [6, 6, 4], 0.0417, -23)
    x = n.pad(n.input, [[0, 0], [1, 2], [2, 1], [0, 0]], 'pad')
    x = n.conv(x, 8, 3, 1, 'VALID', 'NONE', 'conv')
    x = n.pool(x, 'MAX', 2, 2, 'SAME', 'maxpool')
    return n, x


def mean_hw(keep=True):
    n = Net('mean_hw' if keep else 'mean_hw_flat', 'mean_hw', [5, 5, 6], 0.0187, 3)
    x = n.conv(n.input, 8, 1, 1, 'VALID', 'NONE', 'conv')
    x = n.mean(x, keep, 'mean')
    x = n.fc(x, 6, 'fc')
    return n, n.softmax(x, 'softmax')


def add_relu():
    n = Net('add_relu', 'add_relu', [6, 6, 8], 0.0263, -6)
    a = n.conv(n.input, 8, 3, 1, 'SAME', 'NONE', 'branch_a')
    b = n.conv(n.input, 8, 3, 1, 'SAME', 'NONE', 'branch_b')
    # output range widened below 0 (zp != -128) so the fused RELU clamp binds
    v = f_act(n.val[a] + n.val[b], 'RELU')
    x = n.add(a, b, 'RELU', 'add', out_range=(-0.12 * v.max(), v.max()))
    x = n.pool(x, 'AVG', 3, 2, 'SAME', 'avgpool')
    x = n.reshape(x, 'flatten')
    x = n.fc(x, 10, 'fc')
    return n, n.softmax(x, 'softmax')


MODELS = [conv_same_s2, dw_mult2, pad_conv, mean_hw, lambda: mean_hw(False), add_relu]


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for make in MODELS:
        net, out = make()
        name = net.name
        path = os.path.join(out_dir, name + '.tflite')
        open(path, 'wb').write(net.build(out))
        it = runtime.Interpreter.from_file(path, arena_size=1 << 20,
                                           intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)
        inp = it.get_input_details(0)
        zp = int(inp["quantization_parameters"]["zero_points"][0])
        rng = np.random.default_rng(VECTOR_SEED + zlib.crc32(name.encode()))
        xs = inputs_for(inp["shape"], zp, N_VECTORS, rng)
        li = logits_index(path)
        logits, outs = [], []
        for x in xs:
            it.set_input(x.reshape(inp["shape"]), 0)
            it.invoke()
            outs.append(np.array(it.get_output(0)).reshape(-1).copy())
            logits.append(np.array(it.GetTensor(li, 0)["tensor_data"]).reshape(-1).copy() if li is not None else outs[-1])
        np.save(os.path.join(out_dir, name + ".inputs.npy"), xs)
        np.save(os.path.join(out_dir, name + ".logits.npy"), np.stack(logits).astype(np.int8))
        np.save(os.path.join(out_dir, name + ".outputs.npy"), np.stack(outs).astype(np.int8))
        print(f"{name}: {os.path.getsize(path)} bytes, input {[int(s) for s in inp['shape']]} zp {zp}, logits tensor {li}, "
              f"min arena {min_arena(path)} B, distinct outputs {len({o.tobytes() for o in outs})}/{len(outs)}")
        for line in net.log:
            print("   ", line)
        for t, (s, z) in net.q.items():
            print(f"    q t{t} {net.tensors[t].name}: scale {s:.6g} zp {z}")


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else '.')
