"""Computes the PyTorch reference for TestTorchReference (torch_test.go).

Regenerate with, from the repository root:

    go test ./pkg/model -run TestTorchReference -torch-dump=/tmp/cnnref
    /usr/bin/python3 pkg/model/testdata/torch_cnn_reference.py /tmp/cnnref > pkg/model/testdata/torch_cnn_reference.json

The Go test writes the CNN's flat parameters (params.f32), the inputs (x.f32)
and labels (y.i32), little-endian. This script loads them into PyTorch's own
CNN (the one in shared/bench/torch_train.py) by walking its state_dict in
order, which checks that the Go layout is PyTorch's, and records the loss,
the logits and the gradients of the mean cross-entropy.
"""
import json, os, sys
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F


class CNN(nn.Module):
    def __init__(s):
        super().__init__()
        s.conv1 = nn.Conv2d(1, 32, 3, 1, 1); s.conv2 = nn.Conv2d(32, 64, 3, 1, 1); s.pool = nn.MaxPool2d(2, 2)
        s.fc1 = nn.Linear(64 * 7 * 7, 128); s.fc2 = nn.Linear(128, 10)

    def forward(s, x):
        x = s.pool(F.relu(s.conv1(x))); x = s.pool(F.relu(s.conv2(x)))
        return s.fc2(F.relu(s.fc1(x.flatten(1))))


def main(d):
    params = np.fromfile(os.path.join(d, "params.f32"), dtype="<f4")
    x = np.fromfile(os.path.join(d, "x.f32"), dtype="<f4")
    y = np.fromfile(os.path.join(d, "y.i32"), dtype="<i4")
    n = len(y)
    model = CNN()
    sd, off = model.state_dict(), 0
    for name, t in sd.items():
        k = t.numel()
        sd[name] = torch.from_numpy(params[off:off + k].copy()).reshape(t.shape)
        off += k
    assert off == len(params), (off, len(params))
    model.load_state_dict(sd)
    logits = model(torch.from_numpy(x.copy()).reshape(n, 1, 28, 28))
    loss = F.cross_entropy(logits, torch.from_numpy(y.astype(np.int64)), reduction="sum")
    (loss / n).backward()  # the trainer's convention: scale = 1/batch
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad.detach().double().flatten()
        idx = [int(i) for i in np.linspace(0, g.numel() - 1, 16).round()]
        grads[name] = {"index": idx, "value": [g[i].item() for i in idx], "l2": g.norm().item(), "sum": g.sum().item()}
    json.dump({"torch": torch.__version__, "n": n, "loss_sum": loss.item(),
               "logits": logits.detach().double().flatten().tolist(), "grads": grads}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main(sys.argv[1])
