#!/usr/bin/env python3
"""Side-by-side benchmark of kc against its peers (PyTorch CPU, NumPy) on this machine.

    bench/setup.sh                    # once: a virtual environment in bench/.venv with torch and numpy
    bench/.venv/bin/python bench/run.py [--threads 1,2] [--only matmul] [--out docs/perf.md]

For each workload and thread count, kc (`kc bench --format json`, the release binary, built first) and
each peer run in alternation, `--rounds` times; each side's figure is the median of its rounds' medians,
and the table gives the ratio peer time / kc time (above 1: kc is faster). The machine's description and
the date go at the top of the output file. Peers are timed the way `kc bench` times kc: warm-up calls, then
timed calls of the whole operation, outputs allocated by the call.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KC = os.path.join(ROOT, "target", "release", "kc")


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


def kc_bench(file, dims, threads, kernel=None, min_time=1.0):
    cmd = [KC, "bench", os.path.join(ROOT, file), "--dims", dims, "--threads", str(threads), "--format", "json",
           "--min-time", str(min_time)]
    if kernel:
        cmd += ["--kernel", kernel]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out)["median_s"]


# ----- workloads: (name, shapes, kc file, kc dims, kc kernel, {peer: setup(threads) -> fn}) -----


def torch_peers(kind, shape):
    import torch

    def mk(*s, dtype=torch.bfloat16):
        return torch.randn(*s).to(dtype)

    if kind == "matmul":
        m, k, n = shape
        a, b = mk(m, k), mk(k, n)
        return {"torch.matmul (bf16)": lambda: a @ b}
    if kind == "softmax":
        r, c = shape
        x = mk(r, c)
        return {"torch.softmax (bf16)": lambda: torch.softmax(x, dim=-1)}
    if kind == "rmsnorm":
        t, d = shape
        x, w = mk(t, d), mk(d)

        def rms():
            xf = x.float()
            rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
            return (xf * rstd * w.float()).to(torch.bfloat16), rstd

        return {"PyTorch ops (bf16 in, f32 math)": rms}
    if kind == "cross_entropy":
        import torch.nn.functional as F

        n, v = shape
        logits, target = mk(n, v), torch.randint(0, v, (n,))
        leaf = logits.clone().requires_grad_(True)

        def fwd_bwd():
            (g,) = torch.autograd.grad(F.cross_entropy(leaf, target), leaf)
            return g

        # kc's kernel gives the per-row loss and the gradient: the forward alone does less, the pair more
        # (autograd keeps the softmax).
        return {
            "F.cross_entropy fwd (bf16)": lambda: F.cross_entropy(logits, target),
            "F.cross_entropy fwd+bwd (bf16)": fwd_bwd,
        }
    if kind == "rmsnorm_bwd":
        t, d = shape
        x, w, dy = mk(t, d), mk(d), mk(t, d)
        rstd = torch.rand(t, 1) + 0.5

        def rms_bwd():
            xf, wf, dyf = x.float(), w.float(), dy.float()
            g = dyf * wf
            c = (g * xf).mean(-1, keepdim=True)
            dx = (rstd * (g - xf * rstd * rstd * c)).to(torch.bfloat16)
            return dx, (dyf * xf * rstd).sum(0)

        return {"PyTorch ops (bf16 in, f32 math)": rms_bwd}
    if kind == "adamw":
        (n,) = shape
        p = torch.randn(n, requires_grad=True)
        p.grad = torch.randn(n).to(torch.bfloat16).float()
        out = {}
        for fused in (True, False):
            opt = torch.optim.AdamW([p], lr=1e-3, fused=fused) if fused else torch.optim.AdamW([p], lr=1e-3, foreach=True)
            out["torch AdamW " + ("fused" if fused else "foreach")] = opt.step
        return out
    raise ValueError(kind)


def numpy_peers(kind, shape):
    import numpy as np

    if kind == "matmul":
        m, k, n = shape
        a = np.random.rand(m, k).astype(np.float32)
        b = np.random.rand(k, n).astype(np.float32)
        return {"NumPy matmul (f32)": lambda: a @ b}
    return {}


WORKLOADS = [
    ("matmul", (2048, 2048, 2048), "kernels/matmul.ker", "M=2048,K=2048,N=2048", None),
    ("matmul", (4096, 1024, 4096), "kernels/matmul.ker", "M=4096,K=1024,N=4096", None),
    ("softmax", (8192, 4096), "kernels/softmax.ker", "N=8192,D=4096", None),
    ("rmsnorm", (8192, 4096), "kernels/rmsnorm.ker", "T=8192,D=4096", None),
    ("rmsnorm_bwd", (8192, 4096), "kernels/rmsnorm_bwd.ker", "T=8192,D=4096", None),
    ("cross_entropy", (4096, 32768), "kernels/cross_entropy.ker", "N=4096,V=32768", None),
    ("adamw", (16777216,), "kernels/adamw.ker", "N=16777216", None),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--only", default=None, help="run only workloads of this kind")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "perf.md"))
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "kc-cli"], cwd=ROOT, check=True)
    import torch

    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        for kind, shape, file, dims, kernel in WORKLOADS:
            if args.only and kind != args.only:
                continue
            peers = dict(torch_peers(kind, shape))
            peers.update(numpy_peers(kind, shape))
            kc_t, peer_t = [], {p: [] for p in peers}
            for _ in range(args.rounds):
                kc_t.append(kc_bench(file, dims, threads, kernel, args.min_time))
                for p, fn in peers.items():
                    peer_t[p].append(timeit(fn, args.min_time))
            k = statistics.median(kc_t)
            for p, ts in peer_t.items():
                t = statistics.median(ts)
                rows.append((kind, "x".join(map(str, shape)), threads, p, k, t))
                print(f"{kind} {shape} threads={threads}: kc {k*1e3:.2f} ms, {p} {t*1e3:.2f} ms, "
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


if __name__ == "__main__":
    sys.exit(main())
