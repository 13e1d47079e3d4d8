#!/usr/bin/env python3
"""Build the float32 ONNX import test models in this folder.

    python make_onnx_models.py OUTDIR MNIST_DIR [NAME ...]
    # e.g.  cd tests/data/onnx && python make_onnx_models.py . ~/.cache/lepton/mnist
    # NAMEs: rebuild only those models, keeping the others' entries of OUTDIR/manifest.json

MNIST_DIR holds the four raw (uncompressed) IDX files: train-images-idx3-ubyte, train-labels-idx1-ubyte,
t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte.

For every model NAME it writes
    NAME.onnx          the model (opset 13, float32, dynamic batch dim)
    NAME.inputs.npy    float32 [8, ...] inputs in the model's own layout (NCHW for torch, NHWC for Keras)
    NAME.outputs.npy   float32 [8, K]  the exporting framework's outputs on those inputs
                       (torch module in eval mode / Keras model.predict), not onnxruntime's
plus keras_nhwc_rgb.calibration.npy (float32 [64,16,16,3], uniform [0,1]) and manifest.json (framework test
accuracies, onnxruntime check, ONNX op sequences, I/O names and shapes, package versions).

Everything is seeded; see SEED_* below. Training is Adam lr 1e-3, batch 64, on the 60,000 MNIST training images
scaled to [0,1] (pixel/255), for EPOCHS epochs (torch_resnet_block: RESNET_EPOCHS, see there); accuracy is measured
by the framework on the 10,000 test images.
"""

import json
import os
import struct
import sys
import warnings
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")

import numpy as np

THREADS = 2
SEED_TORCH = 20240607      # + crc32(model name): torch.manual_seed for weights and the shuffle generator
SEED_KERAS = 20240607      # + crc32(model name): keras.utils.set_random_seed (python, numpy, tf)
SEED_RGB_DATA = 1234       # numpy default_rng for keras_nhwc_rgb's inputs (seed) and calibration (seed + 1)
EPOCHS = 2
# The residual block learns slowly through its global-average head: after 2 epochs (89.69 %) its logits sat so
# near ties that one quantization step of rounding noise flipped 2.5 % of its argmaxes. Trained to convergence
# like a model a user would ship.
RESNET_EPOCHS = 8
BATCH = 64
LR = 1e-3
N_VECTORS = 8
ORT_TOL = 1e-4


def name_seed(base, name):
    return (base + zlib.crc32(name.encode())) % (2 ** 31)


# ----------------------------------------------------------------------------------------------- MNIST

def read_idx(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    assert magic >> 8 == 0x08, f"{path}: not a ubyte IDX file"
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(dims)


def load_mnist(d):
    xtr = read_idx(os.path.join(d, "train-images-idx3-ubyte"))
    ytr = read_idx(os.path.join(d, "train-labels-idx1-ubyte"))
    xte = read_idx(os.path.join(d, "t10k-images-idx3-ubyte"))
    yte = read_idx(os.path.join(d, "t10k-labels-idx1-ubyte"))
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    f = lambda x: (x.astype(np.float32) / np.float32(255.0))
    return f(xtr), ytr.astype(np.int64), f(xte), yte.astype(np.int64)


# ----------------------------------------------------------------------------------------------- ONNX

def describe_onnx(path):
    import onnx
    m = onnx.load(path)
    onnx.checker.check_model(m)

    def vi(v):
        dims = []
        for d in v.type.tensor_type.shape.dim:
            dims.append(d.dim_param if d.HasField("dim_param") else int(d.dim_value))
        return {"name": v.name, "elem_type": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type),
                "shape": dims}

    inits = {i.name for i in m.graph.initializer}
    return {
        "bytes": os.path.getsize(path),
        "ir_version": m.ir_version,
        "opset": {o.domain or "ai.onnx": o.version for o in m.opset_import},
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "ops": [n.op_type for n in m.graph.node],
        "inputs": [vi(v) for v in m.graph.input if v.name not in inits],
        "outputs": [vi(v) for v in m.graph.output],
        "n_initializers": len(m.graph.initializer),
    }


def ort_check(path, x, y_ref):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    iname = sess.get_inputs()[0].name
    y = sess.run(None, {iname: x})[0]
    assert y.shape == y_ref.shape, (y.shape, y_ref.shape)
    diff8 = float(np.max(np.abs(y - y_ref)))
    # The batch dim is dynamic: batch 1 and batch 3 must give the same rows.
    y1 = sess.run(None, {iname: x[:1]})[0]
    y3 = sess.run(None, {iname: x[3:6]})[0]
    diff_b = float(max(np.max(np.abs(y1 - y_ref[:1])), np.max(np.abs(y3 - y_ref[3:6]))))
    assert diff8 <= ORT_TOL and diff_b <= ORT_TOL, (path, diff8, diff_b)
    return {"max_abs_diff_batch8": diff8, "max_abs_diff_batch1_and_3": diff_b, "tolerance": ORT_TOL}


# ----------------------------------------------------------------------------------------------- torch

def torch_models():
    import torch
    import torch.nn as nn

    class SeedCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(64, 64, 3), nn.ReLU(),
                nn.Flatten(), nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, 10))

        def forward(self, x):
            return self.net(x)

    class DSCNNBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
                nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
                nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU6(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

        def forward(self, x):
            return self.net(x)

    class ResNetBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(16)
            self.head = nn.Sequential(
                nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

        def forward(self, x):
            x = self.stem(x)
            y = torch.relu(self.bn1(self.conv1(x)))
            y = torch.relu(self.bn2(self.conv2(y)) + x)
            return self.head(y)

    return [
        ("torch_seed_cnn", SeedCNN, {"do_constant_folding": True}, EPOCHS),
        ("torch_dscnn_block", DSCNNBlock, {"do_constant_folding": False}, EPOCHS),
        ("torch_resnet_block", ResNetBlock, {"do_constant_folding": True}, RESNET_EPOCHS),
    ]


def run_torch(outdir, mnist, manifest, only):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    xtr, ytr, xte, yte = mnist
    xtr_t = torch.from_numpy(xtr).unsqueeze(1)   # NCHW
    ytr_t = torch.from_numpy(ytr)
    xte_t = torch.from_numpy(xte).unsqueeze(1)
    yte_t = torch.from_numpy(yte)

    for name, cls, export_kw, epochs in torch_models():
        if only and name not in only:
            continue
        seed = name_seed(SEED_TORCH, name)
        torch.manual_seed(seed)
        model = cls()
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        gen = torch.Generator().manual_seed(seed)
        losses = []
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(xtr_t.shape[0], generator=gen)
            tot, cnt = 0.0, 0
            for i in range(0, perm.numel(), BATCH):
                idx = perm[i:i + BATCH]
                opt.zero_grad()
                loss = F.cross_entropy(model(xtr_t[idx]), ytr_t[idx])
                loss.backward()
                opt.step()
                tot += float(loss.detach()) * idx.numel()
                cnt += idx.numel()
            losses.append(tot / cnt)
            print(f"{name}: epoch {epoch + 1} train loss {losses[-1]:.4f}", flush=True)
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(xte_t[i:i + 1000]).argmax(1) for i in range(0, 10000, 1000)])
            acc = float((pred == yte_t).float().mean())
            x8 = xte_t[:N_VECTORS].contiguous()
            y8 = model(x8).numpy().astype(np.float32)
        print(f"{name}: test accuracy {acc:.4f}", flush=True)

        path = os.path.join(outdir, name + ".onnx")
        export_args = dict(input_names=["input"], output_names=["logits"],
                           dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=13,
                           **export_kw)
        import inspect
        if "dynamo" in inspect.signature(torch.onnx.export).parameters:
            export_args["dynamo"] = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), path, **export_args)
        x8n = x8.numpy().astype(np.float32)
        np.save(os.path.join(outdir, name + ".inputs.npy"), x8n)
        np.save(os.path.join(outdir, name + ".outputs.npy"), y8)
        manifest["models"][name] = {
            "framework": f"torch {torch.__version__}",
            "seed": seed,
            "export": {k: v for k, v in export_args.items()},
            "epochs": epochs,
            "train_loss_per_epoch": losses,
            "test_accuracy": acc,
            "inputs_npy": {"shape": list(x8n.shape), "what": "first 8 MNIST test images / 255, NCHW"},
            "test_labels_of_inputs": [int(v) for v in yte[:N_VECTORS]],
            "outputs_npy": {"shape": list(y8.shape), "what": "torch module (eval) logits"},
            "onnx": describe_onnx(path),
            "onnxruntime": ort_check(path, x8n, y8),
        }


# ----------------------------------------------------------------------------------------------- Keras

def run_keras(outdir, mnist, manifest, only):
    if only and not any(n.startswith("keras_") for n in only):
        return
    import tensorflow as tf
    import tf2onnx
    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    keras = tf.keras
    L = keras.layers
    xtr, ytr, xte, yte = mnist

    # ---- keras_seed_cnn: the seed CNN, NHWC, trained on MNIST
    name = "keras_seed_cnn"
    seed = name_seed(SEED_KERAS, name)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((28, 28, 1), name="input"),
        L.Conv2D(32, 3, activation="relu", name="conv1"), L.MaxPool2D(name="pool1"),
        L.Conv2D(64, 3, activation="relu", name="conv2"), L.MaxPool2D(name="pool2"),
        L.Conv2D(64, 3, activation="relu", name="conv3"),
        L.Flatten(name="flatten"), L.Dense(64, activation="relu", name="fc1"), L.Dense(10, name="logits"),
    ], name=name)
    model.compile(optimizer=keras.optimizers.Adam(LR),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    hist = model.fit(xtr[..., None], ytr, batch_size=BATCH, epochs=EPOCHS, shuffle=True, verbose=2)
    _, acc = model.evaluate(xte[..., None], yte, batch_size=1000, verbose=0)
    acc = float(acc)
    print(f"{name}: test accuracy {acc:.4f}", flush=True)
    x8 = np.ascontiguousarray(xte[:N_VECTORS, :, :, None]).astype(np.float32)
    y8 = model.predict(x8, verbose=0).astype(np.float32)
    manifest["models"][name] = keras_export(outdir, name, model, x8, y8, [None, 28, 28, 1], tf, tf2onnx)
    manifest["models"][name].update({
        "seed": seed, "train_loss_per_epoch": [float(v) for v in hist.history["loss"]],
        "test_accuracy": acc,
        "inputs_npy": {"shape": list(x8.shape), "what": "first 8 MNIST test images / 255, NHWC"},
        "test_labels_of_inputs": [int(v) for v in yte[:N_VECTORS]],
    })

    # ---- keras_nhwc_rgb: 3-channel NHWC, untrained, non-trivial BN statistics
    name = "keras_nhwc_rgb"
    seed = name_seed(SEED_KERAS, name)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((16, 16, 3), name="input"),
        L.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
        L.DepthwiseConv2D(3, padding="same", name="dw"),
        L.BatchNormalization(name="bn"),
        L.ReLU(max_value=6.0, name="relu6"),
        L.Conv2D(16, 1, activation="relu", name="pw"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dense(5, name="logits"),
    ], name=name)
    rng = np.random.default_rng(seed)
    # Keras initialises biases to zero and tf2onnx then drops them; give every bias a non-zero value.
    biases = {}
    for lname in ["conv1", "dw", "pw", "logits"]:
        layer = model.get_layer(lname)
        w = layer.get_weights()
        w[-1] = rng.uniform(-0.2, 0.2, w[-1].shape).astype(np.float32)
        layer.set_weights(w)
        biases[lname] = w[-1].tolist()
    bn = model.get_layer("bn")
    # gamma is large enough that the ReLU6 clamps at 6 as well as at 0 on some channels.
    gamma = rng.uniform(1.0, 8.0, 8).astype(np.float32)
    beta = rng.uniform(-1.0, 5.0, 8).astype(np.float32)
    mean = rng.uniform(-0.3, 0.3, 8).astype(np.float32)
    var = rng.uniform(0.02, 0.3, 8).astype(np.float32)
    bn.set_weights([gamma, beta, mean, var])
    x8 = np.random.default_rng(SEED_RGB_DATA).uniform(0, 1, (N_VECTORS, 16, 16, 3)).astype(np.float32)
    calib = np.random.default_rng(SEED_RGB_DATA + 1).uniform(0, 1, (64, 16, 16, 3)).astype(np.float32)
    np.save(os.path.join(outdir, name + ".calibration.npy"), calib)
    y8 = model.predict(x8, verbose=0).astype(np.float32)
    manifest["models"][name] = keras_export(outdir, name, model, x8, y8, [None, 16, 16, 3], tf, tf2onnx)
    manifest["models"][name].update({
        "seed": seed,
        "biases": biases,
        "bn": {"gamma": gamma.tolist(), "beta": beta.tolist(), "moving_mean": mean.tolist(),
               "moving_variance": var.tolist(), "epsilon": float(bn.epsilon)},
        "test_accuracy": None,
        "inputs_npy": {"shape": list(x8.shape),
                       "what": f"uniform [0,1), numpy default_rng({SEED_RGB_DATA}), NHWC"},
        "calibration_npy": {"shape": list(calib.shape),
                            "what": f"uniform [0,1), numpy default_rng({SEED_RGB_DATA + 1}), NHWC"},
    })


def _ver(pkg):
    from importlib import metadata
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "?"


def keras_export(outdir, name, model, x8, y8, in_shape, tf, tf2onnx):
    path = os.path.join(outdir, name + ".onnx")
    spec = [tf.TensorSpec(in_shape, tf.float32, name="input")]
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=path)
    np.save(os.path.join(outdir, name + ".inputs.npy"), x8)
    np.save(os.path.join(outdir, name + ".outputs.npy"), y8)
    return {
        "framework": f"tensorflow {tf.__version__} (tf.keras = keras {_ver('keras')}), tf2onnx {tf2onnx.__version__}",
        "export": {"call": "tf2onnx.convert.from_keras", "input_signature": f"TensorSpec({in_shape}, float32, "
                   "name='input')", "opset": 13},
        "outputs_npy": {"shape": list(y8.shape), "what": "Keras model.predict outputs"},
        "onnx": describe_onnx(path),
        "onnxruntime": ort_check(path, x8, y8),
    }


# ----------------------------------------------------------------------------------------------- main

def versions():
    from importlib import metadata
    out = {}
    for p in ["torch", "tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy",
              "protobuf", "flatbuffers"]:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    out["python"] = sys.version.split()[0]
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    outdir, mnist_dir, only = sys.argv[1], os.path.expanduser(sys.argv[2]), set(sys.argv[3:])
    os.makedirs(outdir, exist_ok=True)
    mnist = load_mnist(mnist_dir)
    manifest = {"format": "lepton-onnx-test-models/1", "versions": versions(), "models": {}}
    if only:
        with open(os.path.join(outdir, "manifest.json")) as f:
            manifest = json.load(f)
        manifest.setdefault("rebuilt", []).append({"models": sorted(only), "versions": versions()})
    # torch first: importing TensorFlow before torch is fine too, but this order is the one recorded.
    run_torch(outdir, mnist, manifest, only)
    run_keras(outdir, mnist, manifest, only)
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    for name, m in manifest["models"].items():
        o = m["onnx"]
        print(f"{name}: {o['bytes']} B  in {o['inputs']}  out {o['outputs']}")
        print(f"  ops {o['ops']}")
        print(f"  acc {m['test_accuracy']}  ort {m['onnxruntime']}")


if __name__ == "__main__":
    main()
