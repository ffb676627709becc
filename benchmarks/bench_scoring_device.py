"""What a GPU can and cannot speed up in the batched scorer: its torch operations against the rest.

    python benchmarks/bench_scoring_device.py                      # CPU: K = 10, 20, 30, 40, 50; 96 channels x 21 draws
    python benchmarks/bench_scoring_device.py --device cuda        # the same on a GPU, timed there

The scorer's time splits into torch operations, which a GPU runs, and the rest (numpy's random draws
and QR decompositions of the nulls, NMI, Python), which stays on the CPU whatever the device. Per
channel (all draws) and per K, this prints the wall time of `score_channels` at the device's default
chunk size (`stats.batched.chunk_size`), the time inside torch operations and the rest (from
torch.profiler's self times on the CPU), the number of torch operations (each a kernel launch or
more on a GPU), of waits for the device (a value read back: `.item()`, `.cpu()`, `.tolist()`), the
operations' FLOPs (matrix products, torch's FLOP counter) and the bytes of their outputs.
On the CPU these bound a GPU run from below: its time per channel is at least the rest plus the
operations' launch cost, and its device work is what the operations compute. The last lines add
them up for a layer of --layer-channels channels scored at K = the largest --ks (rule score) and
re-scored at the smaller ones (rule k_scores). Inputs are generated as in bench_scoring_k.py; torch
and numpy run one thread on the CPU, for stable timings on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import numpy as np
import torch
from bench_scoring_k import make_inputs
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from polypsi.config import NullConfig, StatsConfig
from polypsi.stats import score_channels
from polypsi.stats.batched import chunk_size

READBACKS = ("cpu", "tolist")  # Tensor methods that copy a device tensor to the host (item() is an operation)


class OpCount(TorchDispatchMode):
    """Counts the torch operations that reach the dispatcher, and the values read back from the device."""

    def __init__(self):
        super().__init__()
        self.ops, self.waits, self.bytes = 0, 0, 0
        self.names: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.names[func.__name__] += 1
        if func is torch.ops.aten._local_scalar_dense.default:
            self.waits += 1
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.bytes += t.numel() * t.element_size()
        return out

    def __enter__(self):
        self._saved = {name: getattr(torch.Tensor, name) for name in READBACKS}
        for name, method in self._saved.items():
            def counted(t, *a, _method=method, **kw):
                self.waits += 1
                return _method(t, *a, **kw)
            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, method in self._saved.items():
            setattr(torch.Tensor, name, method)
        return super().__exit__(*exc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 20, 30, 40, 50],
                    help="patches per channel; the largest is the mined K, the others the K-sensitivity's k")
    ap.add_argument("--channels", type=int, default=96)
    ap.add_argument("--m", type=int, default=20, help="null draws (draws 0..m are scored)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--layer-channels", type=int, default=2048, help="channels of the layer to add up (ResNet-50 layer4)")
    ap.add_argument("--launch-us", type=float, default=10.0, help="assumed cost of one torch operation on a GPU")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(1)
        threadpool_limits(1)
    stats, nulls = StatsConfig(), NullConfig(m=args.m, seed=args.seed)
    draws = list(range(args.m + 1))
    ch = np.arange(args.channels)
    inputs = {K: make_inputs(args.channels, K, args.seed) for K in args.ks}

    def run(K):
        Z, y, text = inputs[K]
        score_channels(Z, y, ch, text, draws, stats, nulls, "layer4", device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    print(f"{args.channels} channels x {len(draws)} draws x K patches x 512 dims on {dev}, default chunks; "
          f"best of {args.repeats}; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    Z, y, text = inputs[args.ks[0]]
    score_channels(Z[:2], y[:2], ch[:2], text, draws, stats, nulls, "layer4", device=dev)  # warm-up
    rows = {}
    for K in args.ks:
        count, flops = OpCount(), FlopCounterMode(display=False)
        with count, flops:
            run(K)
        wall, inside = np.inf, np.inf
        for _ in range(args.repeats):
            t = time.perf_counter()
            run(K)
            wall = min(wall, time.perf_counter() - t)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                t = time.perf_counter()
                run(K)
                profiled = time.perf_counter() - t
            ops_s = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::")) / 1e6
            inside = min(inside, ops_s / profiled)  # share of the time inside torch operations
        units = chunk_size(dev, K)
        rows[K] = dict(ms=1e3 * wall / args.channels, ops_ms=1e3 * wall * inside / args.channels,
                       rest_ms=1e3 * wall * (1 - inside) / args.channels, ops=count.ops / args.channels,
                       waits=count.waits / args.channels, units=units, mflop=flops.get_total_flops() / args.channels / 1e6,
                       mb=count.bytes / args.channels / 1e6,
                       chunks=-(-args.channels // max(1, units // len(draws))))
        r = rows[K]
        print(f"K={K:<4d} {r['ms']:8.2f} ms a channel: torch operations {r['ops_ms']:7.2f} ms, rest {r['rest_ms']:6.2f} ms; "
              f"{r['ops']:4.0f} operations, {r['waits']:4.1f} waits, {r['mflop']:5.0f} MFLOP, {r['mb']:4.0f} MB written a "
              f"channel; {units} units a chunk ({r['chunks']} chunks)", flush=True)
    top = ", ".join(f"{name} {n / args.channels:.0f}" for name, n in count.names.most_common(8))
    print(f"most frequent operations a channel at K={args.ks[-1]}: {top}")
    K, small = args.ks[-1], args.ks[:-1]
    n = args.layer_channels
    for label, ks in (("score", [K]), ("k_scores", small)):
        rest = sum(rows[k]["rest_ms"] for k in ks) * n / 1e3
        launches = sum(rows[k]["ops"] for k in ks) * n
        print(f"{n} channels, {label} at K={ks}: the rest {rest:.1f} s on one core of this machine; "
              f"{launches:,.0f} torch operations ({launches * args.launch_us / 1e6:.1f} s at {args.launch_us:g} us each)")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
