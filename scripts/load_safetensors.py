"""Loads a safetensors file written by `coordinator export` into the
equivalent PyTorch module, with load_state_dict(strict=True), and runs it.

Usage: /usr/bin/python3 scripts/load_safetensors.py FILE.safetensors [--mnist DIR]

It needs torch and numpy only: the safetensors format (an 8-byte
little-endian header length, a JSON header, then the raw tensors) is parsed
here by hand. The module comes from the file's __metadata__ (model,
model_config) and is the one the model parity tests use
(pkg/model/testdata/torch_cnn_reference.py, torch_lm_reference.py).

It prints the parameter count and the mean cross-entropy of a forward pass
on a fixed input that needs no random generator, so that the Go side can
compute the same (pkg/export's TestSampleExports does, see docs/models.md),
and, for a CNN with --mnist DIR, its accuracy on MNIST's test set:

  cnn   8 images, x[n,0,i,j] = sin(0.1*(n*784 + 28*i + j) + n), label n
  lstm, gpt  the bytes of scripts/testdata/fixed_input.txt (mod vocab), 2 rows of ctx tokens
        (at most 64); the target of each is the next byte
"""
import argparse, gzip, json, math, os, struct, sys

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pkg", "model", "testdata"))
from torch_cnn_reference import CNN  # noqa: E402
from torch_lm_reference import GPT, LSTMLM  # noqa: E402

FIXED_TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata", "fixed_input.txt")

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    """Returns ({name: tensor}, metadata) from a safetensors file."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = memoryview(buf)[8 + n:]
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[start:end], dtype=np.dtype(DTYPES[info["dtype"]]).newbyteorder("<"))
        tensors[name] = torch.from_numpy(arr.copy()).reshape(info["shape"])
    return tensors, meta


def with_defaults(cfg):
    """model.Config's defaults (pkg/model/config.go), for configs written without them."""
    cfg = dict(cfg)
    if cfg["name"] == "lstm":
        cfg.setdefault("hidden", cfg["dim"])
        cfg.setdefault("bptt", cfg["ctx"])
    if cfg["name"] == "gpt":
        cfg.setdefault("hidden", 4 * cfg["dim"])
    return cfg


def build(cfg):
    if cfg["name"] == "cnn":
        return CNN()
    return {"lstm": LSTMLM, "gpt": GPT}[cfg["name"]](cfg)


def fixed_batch(cfg):
    if cfg["name"] == "cnn":
        n = np.arange(8).reshape(8, 1, 1, 1)
        i = np.arange(28).reshape(1, 1, 28, 1)
        j = np.arange(28).reshape(1, 1, 1, 28)
        x = np.sin(0.1 * (n * 784 + 28 * i + j) + n).astype(np.float32)
        return torch.from_numpy(x), torch.arange(8)
    T = min(cfg["ctx"], 64)
    with open(FIXED_TEXT, "rb") as f:
        b = np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64) % cfg["vocab"]
    assert len(b) >= 2 * T + 1, "FIXED_TEXT is too short"
    tokens = np.stack([b[r * T:(r + 1) * T] for r in range(2)])
    targets = np.stack([b[r * T + 1:(r + 1) * T + 1] for r in range(2)])
    return torch.from_numpy(tokens), torch.from_numpy(targets)


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        buf = f.read()
    dims = buf[3]
    shape = struct.unpack(">" + "I" * dims, buf[4:4 + 4 * dims])
    return np.frombuffer(buf, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def mnist_test(model, d):
    """Accuracy and mean loss on MNIST's 10000 test images, normalised as pkg/mnist does."""
    def find(base):
        for name in (base, base + ".gz"):
            if os.path.exists(os.path.join(d, name)):
                return os.path.join(d, name)
        sys.exit(f"no {base}[.gz] in {d}")
    x = read_idx(find("t10k-images-idx3-ubyte")).astype(np.float32)
    y = torch.from_numpy(read_idx(find("t10k-labels-idx1-ubyte")).astype(np.int64))
    x = torch.from_numpy(((x / 255 - 0.1307) / 0.3081).astype(np.float32)).reshape(-1, 1, 28, 28)
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 1000]) for i in range(0, len(x), 1000)])
    acc = (logits.argmax(1) == y).double().mean().item()
    return acc, F.cross_entropy(logits, y).item()


def main(path, mnist_dir=None):
    tensors, meta = read_safetensors(path)
    cfg = with_defaults(json.loads(meta.get("model_config") or json.dumps({"name": meta["model"]})))
    model = build(cfg)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    x, y = fixed_batch(cfg)
    with torch.no_grad():
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(y.numel(), -1), y.reshape(-1)).item()
    print(f"loaded {os.path.basename(path)} into {type(model).__name__} with strict=True: "
          f"job={meta.get('job', '-')} step={meta.get('step', '-')} model_config={json.dumps(cfg, separators=(',', ':'))}")
    print(f"torch {torch.__version__} params={params} tensors={len(tensors)} fixed_input_loss={loss:.6f} "
          f"(uniform would be {math.log(logits.shape[-1]):.4f})")
    if mnist_dir and cfg["name"] == "cnn":
        acc, loss = mnist_test(model, mnist_dir)
        print(f"mnist test: accuracy={100 * acc:.2f}% loss={loss:.6f} on 10000 images")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--mnist", metavar="DIR", help="for a CNN, also evaluate on MNIST's test set (idx files, gzipped or not)")
    a = ap.parse_args()
    main(a.file, a.mnist)
