"""Computes the PyTorch references for TestTorchReferenceLM (torch_lm_test.go).

Regenerate with, from the repository root:

    go test ./pkg/model -run TestTorchReferenceLM -torch-dump=/tmp/lmref
    /usr/bin/python3 pkg/model/testdata/torch_lm_reference.py /tmp/lmref lstm > pkg/model/testdata/torch_lstm_reference.json
    /usr/bin/python3 pkg/model/testdata/torch_lm_reference.py /tmp/lmref gpt > pkg/model/testdata/torch_gpt_reference.json

For every case the Go test writes a directory <model>_<case> holding the
model's flat parameters (params.f32), the tokens and targets (tokens.i32,
targets.i32; -1 = no loss), little-endian, and case.json (the Config, the
batch shape N and T). This script builds the equivalent PyTorch module,
loads the parameters by walking its state_dict in order (which checks that
the Go layout is PyTorch's), and records the loss, the logits and the
gradients of the loss summed over the target tokens and divided by their
number (the trainer's convention).
"""
import json, math, os, sys
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F


class LSTMLM(nn.Module):
    """The Go LSTM: embedding, nn.LSTM (batch_first), linear head."""

    def __init__(s, cfg):
        super().__init__()
        s.embedding = nn.Embedding(cfg["vocab"], cfg["dim"])
        s.lstm = nn.LSTM(cfg["dim"], cfg["hidden"], cfg["layers"], batch_first=True)
        s.head = nn.Linear(cfg["hidden"], cfg["vocab"])
        s.bptt = cfg["bptt"]

    def forward(s, idx):
        # Truncated BPTT: the state carries on across windows of bptt steps,
        # detached, so that no gradient crosses a window boundary.
        x, outs, state = s.embedding(idx), [], None
        for t0 in range(0, idx.shape[1], s.bptt):
            y, state = s.lstm(x[:, t0:t0 + s.bptt], state)
            state = tuple(v.detach() for v in state)
            outs.append(y)
        return s.head(torch.cat(outs, 1))


class CausalSelfAttention(nn.Module):
    def __init__(s, cfg):
        super().__init__()
        C = cfg["dim"]
        s.c_attn = nn.Linear(C, 3 * C)
        s.c_proj = nn.Linear(C, C)
        s.heads = cfg["heads"]

    def forward(s, x):
        B, T, C = x.shape
        q, k, v = s.c_attn(x).split(C, dim=2)
        q, k, v = (z.view(B, T, s.heads, C // s.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        att = F.softmax(att.masked_fill(mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return s.c_proj(y)


class MLP(nn.Module):
    def __init__(s, cfg):
        super().__init__()
        s.c_fc = nn.Linear(cfg["dim"], cfg["hidden"])
        s.gelu = nn.GELU()
        s.c_proj = nn.Linear(cfg["hidden"], cfg["dim"])

    def forward(s, x):
        return s.c_proj(s.gelu(s.c_fc(x)))


class Block(nn.Module):
    def __init__(s, cfg):
        super().__init__()
        s.ln_1 = nn.LayerNorm(cfg["dim"])
        s.attn = CausalSelfAttention(cfg)
        s.ln_2 = nn.LayerNorm(cfg["dim"])
        s.mlp = MLP(cfg)

    def forward(s, x):
        x = x + s.attn(s.ln_1(x))
        return x + s.mlp(s.ln_2(x))


class GPT(nn.Module):
    """nanoGPT's GPT (bias=True, dropout 0), without its causal-mask buffer."""

    def __init__(s, cfg):
        super().__init__()
        s.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg["vocab"], cfg["dim"]),
            wpe=nn.Embedding(cfg["ctx"], cfg["dim"]),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg["layers"])]),
            ln_f=nn.LayerNorm(cfg["dim"])))
        s.lm_head = nn.Linear(cfg["dim"], cfg["vocab"], bias=False)
        s.tied = cfg.get("tie_embeddings", False)
        if s.tied:
            s.transformer.wte.weight = s.lm_head.weight

    def forward(s, idx):
        T = idx.shape[1]
        x = s.transformer.wte(idx) + s.transformer.wpe(torch.arange(T))
        for b in s.transformer.h:
            x = b(x)
        return s.lm_head(s.transformer.ln_f(x))


def load(model, params, tied):
    sd, off = model.state_dict(), 0
    for name, t in sd.items():
        if tied and name == "lm_head.weight":
            continue  # the same tensor as transformer.wte.weight, stored once
        k = t.numel()
        sd[name] = torch.from_numpy(params[off:off + k].copy()).reshape(t.shape)
        off += k
    assert off == len(params), (off, len(params))
    if tied:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    model.load_state_dict(sd)


def run_case(d):
    case = json.load(open(os.path.join(d, "case.json")))
    cfg, N, T = case["config"], case["n"], case["t"]
    params = np.fromfile(os.path.join(d, "params.f32"), dtype="<f4")
    tokens = np.fromfile(os.path.join(d, "tokens.i32"), dtype="<i4").astype(np.int64).reshape(N, T)
    targets = np.fromfile(os.path.join(d, "targets.i32"), dtype="<i4").astype(np.int64).reshape(N, T)
    model = {"lstm": LSTMLM, "gpt": GPT}[cfg["name"]](cfg)
    load(model, params, cfg.get("tie_embeddings", False))
    logits = model(torch.from_numpy(tokens))
    y = torch.from_numpy(targets).reshape(-1)
    terms = int((y >= 0).sum())
    loss = F.cross_entropy(logits.reshape(-1, cfg["vocab"]), y, ignore_index=-1, reduction="sum")
    (loss / terms).backward()
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad.detach().double().flatten()
        idx = [int(i) for i in np.linspace(0, g.numel() - 1, 16).round()]
        grads[name] = {"index": idx, "value": [g[i].item() for i in idx], "l2": g.norm().item(), "sum": g.sum().item()}
    return {"case": case["name"], "loss_sum": loss.item(), "terms": terms,
            "logits": logits.detach().double().flatten().tolist(), "grads": grads}


def main(d, name):
    cases = sorted(c for c in os.listdir(d) if c.startswith(name + "_"))
    assert cases, f"no {name}_* cases in {d}"
    json.dump({"torch": torch.__version__, "cases": [run_case(os.path.join(d, c)) for c in cases]}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
