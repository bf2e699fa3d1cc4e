"""Cost per batch of the sequence user encoders: SASRec, GRU4Rec and BiMamba at several history lengths.

Training: one ``train.steps.train_epoch`` call on one batch of full windows ``[B, L+1]`` (the exact
per-worker step: states for every prefix, softmax over in-batch + sampled negatives, backward, Adam).
Inference: ``encode_users`` on ``[B, L]`` histories in inference mode (the model-specific part of full
ranking; scoring against the catalogue is the same matrix product for every model).
Medians over repeats after warm-up, on CPU with ``--threads`` intra-op threads and on CUDA when present,
printed as a Markdown table with ratios to SASRec at the same length and device. Each (device, L, model)
runs in a fresh process, so the peak memory column is that configuration's own.

The catalogue defaults to 2,000 items, not MicroLens' 19,738: the loss scores all B·L prefix states
against the batch's targets plus negatives, so at L=200 with the full catalogue it needs a
[51,200 x ~18,600] logits matrix (about 4 GB per copy; such a run peaked at 18 GB of RSS on a 24 GB
machine) that is the same for every model and would swamp both the encoder comparison and the machine.

    python benchmarks/bench_seq.py                        # L = 10, 50, 200; batch 256, dim 64, 2 layers
    python benchmarks/bench_seq.py --lengths 10 --repeats 3 --items 19738
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from train.config import ModelConfig, TrainConfig
from train.registry import build_item_encoder, build_model
from train.steps import train_epoch

MODELS = ("sasrec", "gru4rec", "bimamba")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _median_s(fn, device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_one(name: str, length: int, device: str, args: argparse.Namespace) -> dict:
    """Train and inference seconds per batch and peak memory (GiB) for one model and history length."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mcfg = ModelConfig(dim=args.dim, n_layers=args.layers)
    tcfg = TrainConfig(batch_size=args.batch_size)
    model = build_model(name, build_item_encoder("id", args.items, mcfg.dim, None), mcfg, length).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    gen = torch.Generator().manual_seed(0)
    windows = torch.randint(1, args.items + 1, (args.batch_size, length + 1), generator=gen).to(device)

    def train_step() -> None:
        train_epoch(model, [windows], opt, tcfg, args.items, gen)

    def infer() -> None:
        model.eval()
        with torch.inference_mode():
            model.encode_users(windows[:, :-1])

    train_s = _median_s(train_step, device, args.warmup, args.repeats)
    infer_s = _median_s(infer, device, args.warmup, args.repeats)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 1024**3
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"train_s": train_s, "infer_s": infer_s, "peak_gib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--items", type=int, default=2_000, help="catalogue size (see the module docstring)")
    ap.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    ap.add_argument("--one", nargs=3, metavar=("DEVICE", "L", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # child process: one configuration, one JSON line
        device, length, name = args.one
        print(json.dumps(bench_one(name, int(length), device, args)))
        return
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    print(
        f"batch {args.batch_size}, dim {args.dim}, {args.layers} layers, {args.items:,} items, "
        f"{args.threads} CPU threads, median of {args.repeats} after {args.warmup} warm-up; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; torch {torch.__version__}"
    )
    passthrough = sys.argv[1:]
    rows = []
    for device in devices:
        for length in args.lengths:
            for name in MODELS:
                t0 = time.perf_counter()
                cmd = [sys.executable, __file__, *passthrough, "--one", device, str(length), name]
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                rows.append((device, length, name, res))
                print(f"  {device} L={length} {name}: {time.perf_counter() - t0:.1f}s", flush=True)

    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    print(
        "\n| device | L | model | train ms / batch | × SASRec | inference ms / batch | × SASRec | peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base = {(d, n): r for d, n, m, r in rows if m == "sasrec"}
    for device, length, name, r in rows:
        b = base[(device, length)]
        print(
            f"| {device} | {length} | {name} | {r['train_s'] * 1e3:.1f} | {r['train_s'] / b['train_s']:.2f} | "
            f"{r['infer_s'] * 1e3:.1f} | {r['infer_s'] / b['infer_s']:.2f} | {r['peak_gib']:.2f} |"
        )
    print("\npeak GiB: process RSS on CPU (includes torch itself), max allocated on CUDA")


if __name__ == "__main__":
    main()
