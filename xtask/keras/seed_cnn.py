"""The seed's Keras recipe, timed per epoch: the reference for `cargo xtask bench-train`.

Conv2D(32,3x3,ReLU) - MaxPool2x2 - Conv2D(64,3x3,ReLU) - MaxPool2x2 - Conv2D(64,3x3,ReLU) -
Flatten - Dense(64,ReLU) - Dense(10); inputs in [0,1]; Adam lr 1e-3, batch 64.
Usage: python3 seed_cnn.py MNIST_DIR EPOCHS  -> prints one line "epoch N seconds S accuracy A".
"""
import gzip, os, struct, sys, time

import numpy as np
import tensorflow as tf


def idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        magic, n = struct.unpack(">II", f.read(8))
        dims = [struct.unpack(">I", f.read(4))[0] for _ in range((magic & 0xFF) - 1)]
        return np.frombuffer(f.read(), dtype=np.uint8).reshape([n] + dims)


def find(d, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx", 1), stem.replace("-idx", ".idx", 1) + ".gz"):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    raise SystemExit(f"{stem} not found in {d}")


d, epochs = sys.argv[1], int(sys.argv[2])
x = idx(find(d, "train-images-idx3-ubyte")).astype("float32")[..., None] / 255.0
y = idx(find(d, "train-labels-idx1-ubyte"))
xt = idx(find(d, "t10k-images-idx3-ubyte")).astype("float32")[..., None] / 255.0
yt = idx(find(d, "t10k-labels-idx1-ubyte"))
L = tf.keras.layers
model = tf.keras.Sequential([
    L.Input((28, 28, 1)), L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(),
    L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(), L.Conv2D(64, 3, activation="relu"),
    L.Flatten(), L.Dense(64, activation="relu"), L.Dense(10),
])
model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
for e in range(1, epochs + 1):
    t = time.time()
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    s = time.time() - t
    acc = model.evaluate(xt, yt, verbose=0)[1]
    print(f"epoch {e} seconds {s:.2f} accuracy {acc:.4f}", flush=True)
