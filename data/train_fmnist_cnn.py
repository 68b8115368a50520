#!/usr/bin/env python3
"""Train the small Fashion-MNIST CNN shipped in ``data/`` and export it to ONNX.

This script is the only place where PyTorch is used; anasim itself does not
depend on it.  It produces, in the output folder:

* ``fmnist_cnn.onnx``  - the trained network (opset 17, input ``input`` of
  shape N x 1 x 28 x 28 float32, output ``logits`` of shape N x 10, dynamic
  batch axis ``N``).  BatchNormalization is exported unfused.
* ``fmnist_test.npz``  - the official Fashion-MNIST test set: ``x`` uint8
  (10000 x 28 x 28, raw pixels) and ``y`` int64 (10000,).
* ``fmnist_cnn.json``  - metadata: preprocessing, class names, architecture,
  training settings, versions, test accuracy (PyTorch and onnxruntime).

How to rerun
------------
Data: the Debian package ``dataset-fashion-mnist`` (``apt-get install -y
dataset-fashion-mnist``) installs the original IDX gzip files under
``/usr/share/datasets/fashion-mnist/``.

Environment (kept apart from anasim's own environment)::

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 numpy onnx onnxruntime

Run (from the repository root)::

    /tmp/torchenv/bin/python data/train_fmnist_cnn.py --out data/

Options: ``--epochs`` (default 10), ``--data-dir`` (default the Debian path),
``--threads`` (default 1).  Seeds are fixed and deterministic algorithms are
requested, so a rerun on the same torch version and CPU gives the same model
up to floating-point differences between machines/thread counts.

Preprocessing expected by the model (also recorded in the json)::

    x = pixels.astype(float32) / 255
    x = (x - 0.2860) / 0.3530          # N x 1 x 28 x 28, NCHW
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import random
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MEAN = 0.2860
STD = 0.3530
SEED = 0


# --------------------------------------------------------------------------
# IDX reader (no torchvision)
# --------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
               0x0D: ">f4", 0x0E: ">f8"}


def read_idx_gz(path: str) -> tuple[np.ndarray, str]:
    """Read a gzip-compressed IDX file; return (array, sha256 of raw IDX)."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[dtype_code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: size mismatch {data.size} vs {dims}")
    return data.reshape(dims).copy(), hashlib.sha256(raw).hexdigest()


def load_fashion_mnist(data_dir: str):
    arrays, hashes = {}, {}
    for key, name in FILES.items():
        arrays[key], hashes[name] = read_idx_gz(os.path.join(data_dir, name))
    assert arrays["train_images"].shape == (60000, 28, 28)
    assert arrays["test_images"].shape == (10000, 28, 28)
    assert arrays["train_labels"].shape == (60000,)
    assert arrays["test_labels"].shape == (10000,)
    return arrays, hashes


def preprocess(x_uint8: np.ndarray) -> np.ndarray:
    """uint8 N x 28 x 28 -> float32 N x 1 x 28 x 28 (the model's input)."""
    x = x_uint8.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :]


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------
class FmnistCNN(nn.Module):
    """Conv-BN-ReLU blocks, max pooling, global average pooling, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)   # 28x28
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)  # 14x14
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1, bias=True)   # 7x7
        self.bn3 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)      # 16x14x14
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)      # 32x7x7
        x = F.relu(self.bn3(self.conv3(x)))                       # 64x7x7
        x = F.adaptive_avg_pool2d(x, 1)                           # GlobalAveragePool
        x = torch.flatten(x, 1)
        return self.fc(x)                                         # Gemm


ARCHITECTURE = [
    "Conv(1->16, 3x3, pad 1, no bias) - BatchNorm - ReLU - MaxPool 2x2",
    "Conv(16->32, 3x3, pad 1, no bias) - BatchNorm - ReLU - MaxPool 2x2",
    "Conv(32->64, 3x3, pad 1, bias) - BatchNorm - ReLU",
    "GlobalAveragePool - Flatten - Linear(64->10)",
]


# --------------------------------------------------------------------------
# Training / evaluation
# --------------------------------------------------------------------------
def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        out.append(model(torch.from_numpy(x[i:i + batch])).numpy())
    return np.concatenate(out)


def train(model, x_train, y_train, *, epochs, batch_size, lr, weight_decay, log):
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train)
    n = len(xt)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    gen = torch.Generator().manual_seed(SEED)
    history = []
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        flip = torch.rand(n, generator=gen) < 0.5   # random horizontal flip
        tot_loss, tot_correct = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            xb = xt[idx]
            fb = flip[idx]
            xb = torch.where(fb[:, None, None, None], xb.flip(-1), xb)
            yb = yt[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(idx)
            tot_correct += int((logits.argmax(1) == yb).sum())
        rec = {"epoch": epoch + 1, "train_loss": tot_loss / n,
               "train_acc": tot_correct / n,
               "seconds": round(time.perf_counter() - t0, 1)}
        history.append(rec)
        log(f"epoch {rec['epoch']}/{epochs}: loss {rec['train_loss']:.4f} "
            f"train acc {rec['train_acc']:.4f} ({rec['seconds']} s)")
    return history


# --------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------
def inline_identity_initializers(model_proto) -> None:
    """The TorchScript exporter de-duplicates equal initializers and emits
    ``Identity`` nodes for the copies; replace those by real initializers so
    the graph only holds compute nodes."""
    from onnx import numpy_helper
    inits = {i.name: i for i in model_proto.graph.initializer}
    keep = []
    for node in model_proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            arr = numpy_helper.to_array(inits[node.input[0]])
            model_proto.graph.initializer.append(
                numpy_helper.from_array(arr.copy(), node.output[0]))
        else:
            keep.append(node)
    del model_proto.graph.node[:]
    model_proto.graph.node.extend(keep)


def export_onnx(model: nn.Module, path: str) -> None:
    import io
    import onnx
    model.eval()
    buf = io.BytesIO()
    torch.onnx.export(
        model, (torch.zeros(1, 1, 28, 28),), buf,
        dynamo=False,                 # legacy TorchScript exporter
        opset_version=17,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        training=torch.onnx.TrainingMode.EVAL,
        do_constant_folding=False,    # keep BatchNormalization unfused
    )
    proto = onnx.load_from_string(buf.getvalue())
    inline_identity_initializers(proto)
    proto.doc_string = ("Fashion-MNIST CNN trained by anasim data/train_fmnist_cnn.py; "
                        "input = (pixels/255 - 0.2860)/0.3530, NCHW")
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == 3, ops
    onnx.save(proto, path)


def onnxruntime_logits(path: str, x: np.ndarray, batch: int = 1000, threads: int = 1) -> np.ndarray:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["logits"], {"input": x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


# --------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/", help="output folder (default data/)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak (OneCycle) learning rate")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch/onnxruntime intra-op threads (default 1: on a busy "
                         "2-core machine 2 threads were ~5x slower than 1)")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(args.threads)
    set_seeds(SEED)

    arrays, hashes = load_fashion_mnist(args.data_dir)
    x_train = preprocess(arrays["train_images"])
    y_train = arrays["train_labels"].astype(np.int64)
    x_test_u8 = arrays["test_images"]
    y_test = arrays["test_labels"].astype(np.int64)
    x_test = preprocess(x_test_u8)

    model = FmnistCNN()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params} trainable parameters")

    t0 = time.perf_counter()
    history = train(model, x_train, y_train, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr,
                    weight_decay=args.weight_decay, log=log)
    train_seconds = time.perf_counter() - t0

    lt = torch_logits(model, x_test)
    acc_torch = float((lt.argmax(1) == y_test).mean())
    log(f"test accuracy (PyTorch): {acc_torch:.4f}")

    onnx_path = os.path.join(args.out, "fmnist_cnn.onnx")
    npz_path = os.path.join(args.out, "fmnist_test.npz")
    json_path = os.path.join(args.out, "fmnist_cnn.json")

    export_onnx(model, onnx_path)
    np.savez_compressed(npz_path, x=x_test_u8.astype(np.uint8), y=y_test)

    # Evaluate the exported file on the saved npz exactly as a user would.
    with np.load(npz_path) as d:
        x_npz, y_npz = d["x"], d["y"]
    lo = onnxruntime_logits(onnx_path, preprocess(x_npz), threads=args.threads)
    acc_ort = float((lo.argmax(1) == y_npz).mean())
    max_diff = float(np.abs(lo - lt).max())
    log(f"test accuracy (onnxruntime): {acc_ort:.4f}; max |logit diff| vs torch {max_diff:.2e}")

    import onnx
    import onnxruntime
    meta = {
        "model_file": "fmnist_cnn.onnx",
        "test_set_file": "fmnist_test.npz",
        "dataset": {
            "name": "Fashion-MNIST",
            "source": ("Debian package dataset-fashion-mnist "
                       "(upstream https://github.com/zalandoresearch/fashion-mnist)"),
            "license": "MIT, Copyright (c) 2017 Zalando SE",
            "train_samples": int(len(y_train)),
            "test_samples": int(len(y_test)),
            "sha256_of_decompressed_idx_files": hashes,
        },
        "input": {"name": "input", "shape": ["N", 1, 28, 28], "dtype": "float32",
                  "layout": "NCHW"},
        "output": {"name": "logits", "shape": ["N", 10], "dtype": "float32"},
        "preprocessing": {
            "description": ("x = pixels.astype(float32) / 255; x = (x - mean) / std (float32); "
                            "add channel axis -> N x 1 x 28 x 28"),
            "scale": 1.0 / 255.0, "scale_str": "1/255",
            "mean": MEAN, "std": STD, "layout": "NCHW",
            "input_shape": [1, 28, 28],
            "raw_pixel_dtype": "uint8",
        },
        "class_names": CLASS_NAMES,
        "architecture": ARCHITECTURE,
        "parameters": int(n_params),
        "onnx": {"opset": 17, "exporter": "torch.onnx TorchScript (dynamo=False), do_constant_folding=False",
                 "ops": sorted({n.op_type for n in onnx.load(onnx_path).graph.node}),
                 "file_bytes": os.path.getsize(onnx_path)},
        "training": {
            "epochs": args.epochs, "optimizer": "AdamW",
            "lr": args.lr, "lr_schedule": "OneCycleLR (cosine), peak lr as given",
            "weight_decay": args.weight_decay, "batch_size": args.batch_size,
            "loss": "cross entropy",
            "augmentation": "random horizontal flip (p=0.5)",
            "seed": SEED, "threads": args.threads,
            "train_seconds": round(train_seconds, 1),
            "history": history,
            "model_selection": ("none (fixed schedule, final weights; "
                                "the test set is not used during training)"),
        },
        "test_accuracy": {"torch": acc_torch, "onnxruntime": acc_ort,
                          "max_abs_logit_diff_torch_vs_onnxruntime": max_diff},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "command": f"python data/train_fmnist_cnn.py --out data/ --epochs {args.epochs}",
    }
    with open(json_path, "w") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    log(f"wrote {onnx_path}, {npz_path}, {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
