#!/usr/bin/env python3
"""Side-by-side benchmark of kc against its peers (PyTorch CPU, NumPy) on this machine.

    bench/setup.sh                    # once: a virtual environment in bench/.venv with torch and numpy
    bench/.venv/bin/python bench/run.py [--threads 1,2] [--only matmul,attention] [--out docs/perf.md]
    bench/.venv/bin/python bench/run.py --list      # the workloads, their kc kernels and sizes
    bench/.venv/bin/python bench/run.py --verify    # the peers compute what the kernels compute (small sizes)

For each workload and thread count, kc (`kc bench --format json`, the release binary, built first; under
$CARGO_TARGET_DIR if set) and each peer run in alternation, `--rounds` times; each side's figure is the
median of its rounds' medians, and the table gives the ratio peer time / kc time (above 1: kc is faster).
The machine's description and the date go at the top of the output file. Peers are timed the way `kc
bench` times kc: warm-up calls, then timed calls of the whole operation, outputs allocated by the call.
If kc fails on a workload (an error or a panic), its row says so with kc's first error line, the message
goes to stderr, the other workloads still run, and the script exits with status 1.

Inputs. The older workloads (matmul, softmax, rmsnorm, adamw) let `kc bench` draw its seeded random inputs
and the peers draw theirs. The newer ones make their inputs once in PyTorch (seeded), hand the same tensors
to kc as .npy files (`kc bench --input name=FILE.npy`; bf16 as raw uint16 bits) and to the peer, so both
compute on the same data; inputs that are results of an earlier pass (attention's o and lse for the
backward; the MoE stages) come from `kc run --out DIR --raw-bf16` on those inputs. What each peer computes:

- attention / attention_full (forward, causal / no mask; kernels/attention.ker, attention_full.ker):
  `F.scaled_dot_product_attention(q, k, v, is_causal=..., scale=1/sqrt(D), enable_gqa=True)` on the
  un-repeated K/V (G KV heads; is_causal masks j <= i, the kernel j <= i + T - S: the same at S = T).
  On the CPU it runs PyTorch's flash kernel
  (`aten._scaled_dot_product_flash_attention_for_cpu`), which computes the log-sum-exp rows too (the
  kernel returns them as `lse`), so both sides do the same work.
- attention_bwd (causal; kernels/attention_bwd.ker, given q, k, v, dout and the forward's o and lse): only
  the backward of SDPA is timed: `torch.autograd.grad(o, (q, k, v), dout, retain_graph=True)` on a graph
  built once (the flash kernel's backward, which reuses its saved lse as kc does).
- muon (kernels/muon_orthogonalize.ker): the kernel takes g as M x N with M <= N (X Xᵀ is M x M), so a
  4096 x 1024 weight's gradient is orthogonalized as its 1024 x 4096 transpose, as Muon does; the peer is
  the usual PyTorch loop on the same 1024 x 4096 bf16 matrix with the kernel's coefficients (3.4445,
  -4.7750, 2.0315), 5 steps, normalized by the Frobenius norm + 1e-7.
- rmsnorm_bwd (kernels/rmsnorm_bwd.ker: dx bf16, dw f32): autograd of the rmsnorm ops (x bf16, w an f32
  leaf, so dw is f32 like the kernel's), backward only: `torch.autograd.grad(y, (x, w), dy,
  retain_graph=True)` (this includes the gradient through rstd, as the kernel does).
- cross_entropy (kernels/cross_entropy.ker: per-row loss f32 and dlogits bf16, averaged over the valid
  rows): `F.cross_entropy(logits.float(), target, reduction='none')` on bf16 logits, then the gradient of
  its mean with respect to the bf16 logits (`torch.autograd.grad`): forward and backward, as the kernel.
  A second peer calls it on the bf16 logits directly (PyTorch's bf16 path; the loss comes out in bf16).
- moe_layer: kernels cannot call each other (docs/language.md 7.6). One kernel with the four bodies
  inlined checks and fuses (14 groups), but does not tile: E0606 on its grouped-matmul group, whose
  template needs `offsets` to be a kernel parameter, not a value computed in the kernel
  (ir/src/passes/tile/grouped.rs). So kc's figure is the sum of the medians of four `kc bench` runs, each
  on realistic inputs: moe_route on x (and a gate wg of scale 1/sqrt(M), so that the routing spreads over
  the experts), moe_permute on x and route's idx, moe_experts on permute's xs and offsets and the expert
  weights, moe_combine on experts' ys, permute's order and route's w. The peer is a PyTorch reference on
  the same x, gate and expert weights: sigmoid scores (f32), group-limited top-k, stable argsort by expert,
  a loop over the experts (SwiGLU: silu(x w1ᵀ) * (x w3ᵀ), then w2ᵀ), index_add weighted by w.
  The layer runs at the issue's T = 4096 tokens (T·K = 32768 routed rows; moe_permute's and moe_combine's
  argsort rows are wider than the unified buffer, so kc sorts them in blocks and merges them:
  ir/src/passes/tile/library.rs).

`--verify` checks that each peer of the newer workloads computes what its kc kernel computes: both run at
small sizes on the same inputs (kc with `kc run`), and the peer's results must match kc's within bf16
tolerance (1/64 of the value plus 1/64 of the largest value, as `kc run --check`); exit 1 otherwise.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KC = os.path.join(os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target")), "release", "kc")


def timeit(fn, min_time=1.0, min_iter=5, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    start = time.perf_counter()
    while len(ts) < min_iter or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
        if len(ts) >= 10000:
            break
    return statistics.median(ts)


def kc_cmd(verb, file, dims, threads, kernel=None, inputs=None, scalars=None):
    cmd = [KC, verb, os.path.join(ROOT, file), "--threads", str(threads)]
    if dims:
        cmd += ["--dims", dims]
    if kernel:
        cmd += ["--kernel", kernel]
    for name, path in (inputs or {}).items():
        cmd += ["--input", f"{name}={path}"]
    for name, value in (scalars or {}).items():
        cmd += ["--scalar", f"{name}={value}"]
    return cmd


def kc_bench(file, dims, threads, kernel=None, min_time=1.0, inputs=None, scalars=None, min_iter=5):
    cmd = kc_cmd("bench", file, dims, threads, kernel, inputs, scalars)
    cmd += ["--format", "json", "--min-time", str(min_time), "--min-iterations", str(min_iter)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout)["median_s"]


def kc_run(file, dims, out_dir, kernel=None, inputs=None, scalars=None, threads=2):
    """Runs a kernel once and writes its results as out_dir/NAME.npy (bf16 as raw bits): the next stage's inputs.
    Inputs not given are kc's seeded random ones (`--random 0`, as `kc bench` draws them)."""
    cmd = kc_cmd("run", file, dims, threads, kernel, inputs, scalars)
    cmd += ["--out", out_dir, "--raw-bf16", "--random", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return {f[:-4]: os.path.join(out_dir, f) for f in os.listdir(out_dir) if f.endswith(".npy")}


def save_npy(t, path):
    """A torch tensor as .npy for `kc --input`: bf16 as uint16 raw bits, integers as int32, floats as float32."""
    import numpy as np
    import torch

    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        a = t.view(torch.int16).numpy().view(np.uint16)
    elif t.dtype in (torch.int32, torch.int64):
        a = t.to(torch.int32).numpy()
    else:
        a = t.float().numpy()
    np.save(path, a)
    return path


# ----- workloads: (name, shapes, kc file, kc dims, kc kernel, {peer: setup(threads) -> fn}) -----


# The moe_route kernel's fixed sizes (its `where` clause) and the scalar both sides use.
MOE_NG, MOE_KG, MOE_ROUTE_SCALE = 8, 4, 2.5

_DATA = {}


def data(kind, shape):
    """The inputs of a newer workload, made once (seeded) and shared by kc (as .npy) and the peers."""
    key = (kind, shape)
    if key in _DATA:
        return _DATA[key]
    import torch

    _DATA.clear()  # one workload's tensors at a time (the MoE weights alone are 768 MiB)
    gen = torch.Generator().manual_seed(0)

    def rn(*s, dtype=torch.bfloat16, scale=1.0):
        return (torch.randn(*s, generator=gen) * scale).to(dtype)

    d = {}
    if kind in ("attention", "attention_full", "attention_bwd"):
        b, h, g, s, t, dd = shape
        d = dict(q=rn(b, h, s, dd), k=rn(b, g, t, dd), v=rn(b, g, t, dd), scale=dd**-0.5)
        if kind == "attention_bwd":
            d["dout"] = rn(b, h, s, dd)
    elif kind == "muon":
        m, n = shape
        d = dict(g=rn(m, n))
    elif kind == "rmsnorm_bwd":
        t, dd = shape
        x = rn(t, dd)
        d = dict(x=x, w=rn(dd), dy=rn(t, dd), eps=1e-6)
        d["rstd"] = torch.rsqrt(x.float().pow(2).mean(-1) + d["eps"])
    elif kind == "cross_entropy":
        n, v = shape
        d = dict(logits=rn(n, v, scale=2.0), target=torch.randint(0, v, (n,), generator=gen, dtype=torch.int32))
    elif kind == "moe_layer":
        t, m, e, k, f = shape
        d = dict(x=rn(t, m), wg=rn(e, m, scale=m**-0.5), bias=rn(e, dtype=torch.float32, scale=0.01))
        d.update(w1=rn(e, f, m, scale=m**-0.5), w3=rn(e, f, m, scale=m**-0.5), w2=rn(e, m, f, scale=f**-0.5))
    else:
        raise ValueError(kind)
    _DATA[key] = d
    return d


def kc_stages(kind, shape, file, dims, kernel, tmp):
    """What kc times for a workload: a list of (file, dims, kernel, inputs, scalars), one `kc bench` each; the
    workload's time is the sum of their medians. Inputs are written to tmp (once per workload)."""
    if kind in ("matmul", "softmax", "rmsnorm", "adamw"):
        return [(file, dims, kernel, {}, {})]
    d = data(kind, shape)

    def npy(**ts):
        return {name: save_npy(t, os.path.join(tmp, name + ".npy")) for name, t in ts.items()}

    if kind in ("attention", "attention_full"):
        return [(file, dims, kernel, npy(q=d["q"], k=d["k"], v=d["v"]), {"scale": repr(d["scale"])})]
    if kind == "attention_bwd":
        ins = npy(q=d["q"], k=d["k"], v=d["v"], dout=d["dout"])
        fwd_in = {n: ins[n] for n in ("q", "k", "v")}
        fwd = kc_run("kernels/attention.ker", dims, os.path.join(tmp, "fwd"), None, fwd_in, {"scale": repr(d["scale"])})
        ins.update(o=fwd["o"], lse=fwd["lse"])
        return [(file, dims, kernel, ins, {"scale": repr(d["scale"])})]
    if kind == "muon":
        return [(file, dims, kernel, npy(g=d["g"]), {})]
    if kind == "rmsnorm_bwd":
        return [(file, dims, kernel, npy(x=d["x"], w=d["w"], dy=d["dy"], rstd=d["rstd"]), {})]
    if kind == "cross_entropy":
        return [(file, dims, kernel, npy(logits=d["logits"], target=d["target"]), {})]
    if kind == "moe_layer":
        t, m, e, k, f = shape
        ins = npy(x=d["x"], wg=d["wg"], bias=d["bias"])
        route = ("kernels/moe_route.ker", f"T={t},M={m},E={e}", None, ins, {"route_scale": MOE_ROUTE_SCALE})
        r = kc_run(*route[:2], os.path.join(tmp, "route"), None, route[3], route[4])
        permute = ("kernels/moe_permute.ker", f"T={t},K={k},M={m},E={e}", None, {"x": ins["x"], "idx": r["idx"]}, {})
        p = kc_run(*permute[:2], os.path.join(tmp, "permute"), None, permute[3])
        experts = ("kernels/moe_experts.ker", f"R={t * k},M={m},F={f},E={e}", None,
                   dict(xs=p["xs"], offsets=p["offsets"], **npy(w1=d["w1"], w3=d["w3"], w2=d["w2"])), {})
        x = kc_run(*experts[:2], os.path.join(tmp, "experts"), None, experts[3])
        combine = ("kernels/moe_combine.ker", f"T={t},K={k},M={m}", None,
                   {"ys": x["ys"], "order": p["order"], "w": r["w"]}, {})
        return [route, permute, experts, combine]
    raise ValueError(kind)


def torch_peers(kind, shape):
    import torch
    import torch.nn.functional as F

    def mk(*s, dtype=torch.bfloat16):
        return torch.randn(*s).to(dtype)

    if kind == "matmul":
        m, k, n = shape
        a, b = mk(m, k), mk(k, n)
        # Into a kept output (`out=`), as kc bench writes into the previous call's results.
        c = torch.empty(m, n, dtype=torch.bfloat16)
        return {"torch.matmul (bf16)": lambda: torch.matmul(a, b, out=c)}
    if kind == "softmax":
        r, c = shape
        x = mk(r, c)
        y = torch.empty(r, c, dtype=torch.bfloat16)
        return {"torch.softmax (bf16)": lambda: torch.softmax(x, dim=-1, out=y)}
    if kind == "rmsnorm":
        t, d = shape
        x, w = mk(t, d), mk(d)

        def rms():
            xf = x.float()
            rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
            return (xf * rstd * w.float()).to(torch.bfloat16), rstd

        return {"PyTorch ops (bf16 in, f32 math)": rms}
    if kind == "adamw":
        (n,) = shape
        p = torch.randn(n, requires_grad=True)
        p.grad = torch.randn(n).to(torch.bfloat16).float()
        out = {}
        for fused in (True, False):
            opt = torch.optim.AdamW([p], lr=1e-3, fused=fused) if fused else torch.optim.AdamW([p], lr=1e-3, foreach=True)
            out["torch AdamW " + ("fused" if fused else "foreach")] = opt.step
        return out
    if kind in ("attention", "attention_full"):
        d = data(kind, shape)
        q, k, v, sc = d["q"], d["k"], d["v"], d["scale"]
        causal = kind == "attention"
        return {"F.scaled_dot_product_attention (enable_gqa)": lambda: F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=sc, enable_gqa=True)}
    if kind == "attention_bwd":
        d = data(kind, shape)
        q, k, v = (d[n].clone().requires_grad_() for n in ("q", "k", "v"))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=d["scale"], enable_gqa=True)
        dout = d["dout"]
        return {"SDPA autograd, backward only (enable_gqa)": lambda: torch.autograd.grad(
            o, (q, k, v), dout, retain_graph=True)}
    if kind == "muon":
        g = data(kind, shape)["g"]

        def newton_schulz():
            a, b, c = 3.4445, -4.7750, 2.0315
            x = g / (g.norm() + 1e-7)
            for _ in range(5):
                aa = x @ x.T
                bb = b * aa + c * (aa @ aa)
                x = a * x + bb @ x
            return x

        return {"PyTorch Newton-Schulz loop (bf16)": newton_schulz}
    if kind == "rmsnorm_bwd":
        d = data(kind, shape)
        x = d["x"].clone().requires_grad_()
        w = d["w"].float().requires_grad_()
        rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + d["eps"])
        y = (x.float() * rstd * w).to(torch.bfloat16)
        dy = d["dy"]
        return {"PyTorch autograd, backward only": lambda: torch.autograd.grad(y, (x, w), dy, retain_graph=True)}
    if kind == "cross_entropy":
        d = data(kind, shape)
        logits, target = d["logits"], d["target"].long()

        def ce():
            lg = logits.detach().requires_grad_()
            loss = F.cross_entropy(lg.float(), target, reduction="none")
            n_valid = max(int((target >= 0).sum()), 1)
            (dlogits,) = torch.autograd.grad(loss.sum() / n_valid, lg)
            return loss.detach(), dlogits

        def ce_bf16():
            lg = logits.detach().requires_grad_()
            loss = F.cross_entropy(lg, target, reduction="none")
            n_valid = max(int((target >= 0).sum()), 1)
            (dlogits,) = torch.autograd.grad(loss.sum() / n_valid, lg)
            return loss.detach().float(), dlogits

        return {"F.cross_entropy fwd+bwd (bf16 logits, f32 math)": ce,
                "F.cross_entropy fwd+bwd (bf16 throughout)": ce_bf16}
    if kind == "moe_layer":
        t, m, e, k, f = shape
        d = data(kind, shape)
        x, wg, bias, w1, w3, w2 = (d[n] for n in ("x", "wg", "bias", "w1", "w3", "w2"))
        wg32 = wg.float()

        def moe():
            s = torch.sigmoid(x.float() @ wg32.T)  # [T, E], f32 scores as the kernel's

            sb = s + bias
            top2 = sb.view(t, MOE_NG, e // MOE_NG).topk(2, dim=-1).values.sum(-1)  # [T, NG]
            groups = top2.topk(MOE_KG, dim=-1).indices
            keep = torch.zeros(t, MOE_NG, dtype=torch.bool).scatter_(1, groups, True)
            keep = keep.repeat_interleave(e // MOE_NG, dim=1)
            idx = sb.masked_fill(~keep, float("-inf")).topk(k, dim=-1).indices  # [T, K]
            sw = s.gather(1, idx)
            w = MOE_ROUTE_SCALE * sw / sw.sum(-1, keepdim=True)
            flat = idx.flatten()
            order = torch.argsort(flat, stable=True)
            tok = order // k
            xs = x[tok]
            counts = torch.bincount(flat, minlength=e).tolist()
            ys = torch.empty(t * k, m, dtype=torch.bfloat16)
            lo = 0
            for ex, n in enumerate(counts):
                if n:
                    xe = xs[lo:lo + n]
                    h = F.silu(xe @ w1[ex].T) * (xe @ w3[ex].T)
                    ys[lo:lo + n] = h @ w2[ex].T
                lo += n
            y = torch.zeros(t, m).index_add_(0, tok, ys.float() * w.flatten()[order].unsqueeze(1))
            return y.to(torch.bfloat16)

        return {"PyTorch reference (topk, sort, expert loop, index_add)": moe}
    raise ValueError(kind)


# Small sizes for --verify, and how the kernels name the sizes of the newer workloads.
VERIFY = [
    # S = T for the causal ones: PyTorch's is_causal keeps j <= i (top-left), the kernels j <= i + T - S
    # (bottom-right); the two agree when S = T, as at the benchmark sizes.
    ("attention", (1, 4, 2, 90, 90, 32)),
    ("attention_full", (1, 4, 2, 90, 70, 32)),
    ("attention_bwd", (1, 4, 2, 90, 90, 32)),
    ("muon", (40, 130)),
    ("rmsnorm_bwd", (33, 300)),
    ("cross_entropy", (17, 1000)),
    ("moe_layer", (64, 128, 64, 8, 48)),
]
KC_DIMS = {
    "attention": "B,H,G,S,T,D",
    "attention_full": "B,H,G,S,T,D",
    "attention_bwd": "B,H,G,S,T,D",
    "muon": "M,N",
    "rmsnorm_bwd": "T,D",
    "cross_entropy": "N,V",
    "moe_layer": "T,M,E,K,F",
}
# The tolerance of --verify, as a fraction of (|value| + the largest |value|): bf16's, as `kc run --check`;
# Muon's five Newton-Schulz steps amplify rounding, and the plain bf16 loop rounds after every op where
# the kernel rounds once per `let` (at 40 x 130: 0.018 off kc's result, whose largest value is 0.26; a loop
# emulating the kernel's rounding points in f32 is within 0.0005; one step more or fewer moves it by 0.1).
VERIFY_TOL = {"muon": 1 / 16}
# The results each peer returns, by the names of the kc kernel's results (of the last stage for the MoE layer).
PEER_RESULTS = {
    "attention": ["o"],
    "attention_full": ["o"],
    "attention_bwd": ["dq", "dk", "dv"],
    "muon": ["o"],
    "rmsnorm_bwd": ["dx", "dw"],
    "cross_entropy": ["loss", "dlogits"],
    "moe_layer": ["y"],
}


def verify():
    """Each newer workload at a small size: the peer's results against `kc run`'s on the same inputs."""
    bad = 0
    for kind, shape in VERIFY:
        dims = ",".join(f"{n}={v}" for n, v in zip(KC_DIMS[kind].split(","), shape))
        file = next(w[2] for w in WORKLOADS if w[0] == kind)
        with tempfile.TemporaryDirectory(prefix="kc-verify-") as tmp:
            stages = kc_stages(kind, shape, file, dims, None, tmp)
            f, dm, kn, ins, sc = stages[-1]
            got = kc_run(f, dm, os.path.join(tmp, "out"), kn, ins, sc)
            for peer, fn in torch_peers(kind, shape).items():
                res = fn()
                res = res if isinstance(res, tuple) else (res,)
                bad += check(f"{kind} {shape_label(kind, shape)} [{peer}]", kind, got, res)
        _DATA.clear()
    return 1 if bad else 0


def check(what, kind, got, res):
    """The peer's results `res` against kc's result files `got`: 0 if all match, else 1 (and says which)."""
    import numpy as np

    bad = 0
    for name, t in zip(PEER_RESULTS[kind], res):
        a = np.load(got[name])
        if a.dtype == np.uint16:  # raw bf16 bits
            a = (a.astype(np.uint32) << 16).view(np.float32)
        want = a.astype(np.float64)
        have = t.detach().double().numpy().reshape(want.shape)
        err = np.abs(have - want)
        tol = (np.abs(want) + np.abs(want).max()) * VERIFY_TOL.get(kind, 1 / 64)
        ok = bool((err <= tol).all())
        bad |= not ok
        print(f"{what} {name}: max abs error {err.max():.3g} (largest value {np.abs(want).max():.3g}; "
              f"{(err / tol).max():.0%} of the tolerance): {'ok' if ok else 'MISMATCH'}", flush=True)
    return int(bad)


def numpy_peers(kind, shape):
    import numpy as np

    if kind == "matmul":
        m, k, n = shape
        a = np.random.rand(m, k).astype(np.float32)
        b = np.random.rand(k, n).astype(np.float32)
        c = np.empty((m, n), dtype=np.float32)
        return {"NumPy matmul (f32)": lambda: np.matmul(a, b, out=c)}
    return {}


WORKLOADS = [
    ("matmul", (2048, 2048, 2048), "kernels/matmul.ker", "M=2048,K=2048,N=2048", None),
    ("matmul", (4096, 1024, 4096), "kernels/matmul.ker", "M=4096,K=1024,N=4096", None),
    ("softmax", (8192, 4096), "kernels/softmax.ker", "N=8192,D=4096", None),
    ("rmsnorm", (8192, 4096), "kernels/rmsnorm.ker", "T=8192,D=4096", None),
    ("adamw", (16777216,), "kernels/adamw.ker", "N=16777216", None),
    ("attention", (1, 32, 8, 2048, 2048, 128), "kernels/attention.ker", "B=1,H=32,G=8,S=2048,T=2048,D=128", None),
    ("attention", (1, 32, 32, 2048, 2048, 128), "kernels/attention.ker", "B=1,H=32,G=32,S=2048,T=2048,D=128", None),
    ("attention_full", (1, 32, 8, 2048, 2048, 128), "kernels/attention_full.ker", "B=1,H=32,G=8,S=2048,T=2048,D=128",
     None),
    ("attention_full", (1, 32, 32, 2048, 2048, 128), "kernels/attention_full.ker",
     "B=1,H=32,G=32,S=2048,T=2048,D=128", None),
    ("attention_bwd", (1, 32, 8, 2048, 2048, 128), "kernels/attention_bwd.ker", "B=1,H=32,G=8,S=2048,T=2048,D=128",
     None),
    ("attention_bwd", (1, 32, 32, 2048, 2048, 128), "kernels/attention_bwd.ker",
     "B=1,H=32,G=32,S=2048,T=2048,D=128", None),
    ("muon", (1024, 4096), "kernels/muon_orthogonalize.ker", "M=1024,N=4096", None),
    ("rmsnorm_bwd", (8192, 4096), "kernels/rmsnorm_bwd.ker", "T=8192,D=4096", None),
    ("cross_entropy", (4096, 32768), "kernels/cross_entropy.ker", "N=4096,V=32768", None),
    ("moe_layer", (4096, 2048, 64, 8, 1024), "kernels/moe_{route,permute,experts,combine}.ker",
     "T=4096,M=2048,E=64,K=8,F=1024", None),
]

# How the table names the sizes of a workload (the others: the sizes joined by x).
SHAPE_NAMES = {
    "attention": "B,H,G,S,T,D",
    "attention_full": "B,H,G,S,T,D",
    "attention_bwd": "B,H,G,S,T,D",
    "moe_layer": "T,M,E,K,F",
}


def shape_label(kind, shape):
    if kind in SHAPE_NAMES:
        return " ".join(f"{n}={v}" for n, v in zip(SHAPE_NAMES[kind].split(","), shape))
    return "x".join(map(str, shape))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--only", default=None, help="run only workloads of these kinds (comma-separated)")
    ap.add_argument("--list", action="store_true", help="print the workloads and exit")
    ap.add_argument("--verify", action="store_true", help="check that the peers compute what the kernels compute")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--min-iter", type=int, default=5, help="timed calls at least, each side")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "perf.md"))
    args = ap.parse_args()
    kinds = sorted({w[0] for w in WORKLOADS})
    only = set(args.only.split(",")) if args.only else None
    if only and not only <= set(kinds):
        ap.error(f"--only: unknown kind(s) {', '.join(sorted(only - set(kinds)))}; the kinds: {', '.join(kinds)}")
    if args.verify:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "kc-cli"], cwd=ROOT, check=True)
        return verify()
    if args.list:
        for kind, shape, file, dims, kernel in WORKLOADS:
            print(f"{kind:15} {shape_label(kind, shape):40} {file}{' --kernel ' + kernel if kernel else ''} "
                  f"--dims {dims}")
        return 0
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "kc-cli"], cwd=ROOT, check=True)
    import torch

    rows, failed = [], []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        for kind, shape, file, dims, kernel in WORKLOADS:
            if only and kind not in only:
                continue
            try:
                with tempfile.TemporaryDirectory(prefix="kc-bench-") as tmp:
                    stages = kc_stages(kind, shape, file, dims, kernel, tmp)
                    peers = dict(torch_peers(kind, shape))
                    peers.update(numpy_peers(kind, shape))
                    kc_t, stage_t, peer_t = [], [[] for _ in stages], {p: [] for p in peers}
                    for _ in range(args.rounds):
                        ts = [kc_bench(f, dm, threads, kn, args.min_time, ins, sc, args.min_iter)
                              for f, dm, kn, ins, sc in stages]
                        kc_t.append(sum(ts))
                        for acc, t in zip(stage_t, ts):
                            acc.append(t)
                        for p, fn in peers.items():
                            peer_t[p].append(timeit(fn, args.min_time, args.min_iter))
                    del peers
            except RuntimeError as e:
                # kc failed (an error, a panic): the row says so, the other workloads still run, exit status 1.
                msg = str(e)
                first = next((l.strip() for l in msg.splitlines() if l.lstrip().startswith(("error", "panic"))),
                             msg.splitlines()[-1] if msg else "?")
                print(f"{kind} {shape_label(kind, shape)} threads={threads}: kc FAILED\n{msg}", file=sys.stderr,
                      flush=True)
                failed.append((kind, shape_label(kind, shape), threads, first.replace("|", "/")))
                continue
            finally:
                _DATA.clear()
            if len(stages) > 1:
                print(f"{kind} {shape_label(kind, shape)} threads={threads}: kc by kernel: " + ", ".join(
                    f"{os.path.basename(st[0])} {statistics.median(ts)*1e3:.2f} ms" for st, ts in zip(stages, stage_t)),
                    flush=True)
            k = statistics.median(kc_t)
            for p, ts in peer_t.items():
                t = statistics.median(ts)
                rows.append((kind, shape_label(kind, shape), threads, p, k, t))
                print(f"{kind} {shape_label(kind, shape)} threads={threads}: kc {k*1e3:.2f} ms, {p} {t*1e3:.2f} ms, "
                      f"ratio {t/k:.2f}", flush=True)
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        f"Measured by `bench/run.py` on {datetime.date.today()}: {cpu}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}; PyTorch {torch.__version__}. kc: `kc bench` (JIT, host "
        "tiling), medians of alternating rounds. Ratio = peer time / kc time (above 1: kc is faster).",
        "",
        "| workload | shape | threads | peer | kc (ms) | peer (ms) | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, shape, threads, p, k, t in rows:
        lines.append(f"| {kind} | {shape} | {threads} | {p} | {k*1e3:.2f} | {t*1e3:.2f} | {t/k:.2f} |")
    for kind, shape, threads, err in failed:
        lines.append(f"| {kind} | {shape} | {threads} | — | kc failed: {err} | — | — |")
    # The table replaces what is between the markers of the output file; the rest (the analysis) stays.
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    table = begin + "\n" + "\n".join(lines) + "\n" + end
    try:
        with open(args.out) as f:
            text = f.read()
    except OSError:
        text = "# Performance: kc against its peers\n\n" + begin + "\n" + end + "\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + table + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + table + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
