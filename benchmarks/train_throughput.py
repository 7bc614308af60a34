"""Training throughput (tokens/s) and MFU of the mixjax trainer, next to Hugging Face
transformers + torch training the same model, measured fairly.

    python benchmarks/train_throughput.py [--preset demo] [--batch 16] [--seq 256] [--threads 1,2] [--rounds 5]
    # accelerators (1B, Llama-3.2-1B shape, bf16, packed-sequence flash attention):
    python benchmarks/train_throughput.py --preset llama3.2-1b --seq 4096 --batch 8 --attention flash --no-torch [--devices 8 | --mesh 1,-1,1]

CPU: each thread count runs in its own child process pinned to that many cores
(``sched_setaffinity`` before jax or torch start) with ``torch.set_num_threads`` equal
to it (and at 1 thread XLA without its Eigen thread pool), so both frameworks get the
same cores. The two trainers run interleaved, ``--rounds`` times ``--steps`` steps each, so both
see the same machine load; figures are medians over rounds, the ratio is the median of
the per-round ratios, and the load average is printed before and after (the machine this
runs on is often shared).

MFU = achieved model FLOP/s / peak FLOP/s of all devices used. Accelerators: the sum of
the devices' datasheet dense bf16 peaks (:data:`mixjax.train.metrics.PEAK_FLOPS`, exact
device kinds). CPU has no meaningful datasheet figure here (unknown vector units and
clocks of a shared VM), so the peak is MEASURED in the same child at the same thread
count: the best (fastest of ``PEAK_REPEATS``) float32 1024^3 matmul of jax and of torch,
whichever is higher. A model step can come close to but not beat its best matmul, so
CPU MFU reads "share of this machine's best GEMM rate at n threads". Model FLOPs per
token: ModelConfig.flops_per_token.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

PEAK_SIZE, PEAK_REPEATS = 1024, 12


def batch(b: int, t: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (b, t + 1)).astype(np.int32)
    return {
        "inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((b, t), np.float32),
        "segment_ids": np.ones((b, t), np.int32), "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
    }


def best_rate(run: Callable[[], None], flops: float, repeats: int = PEAK_REPEATS) -> float:
    """FLOP/s of the fastest of ``repeats`` timed calls (after one warm-up call)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return flops / best


def measured_cpu_peak(with_torch: bool) -> tuple[float, str]:
    """The best float32 matmul FLOP/s of jax (and torch) in this process."""
    import jax
    import jax.numpy as jnp

    n, flops = PEAK_SIZE, 2 * PEAK_SIZE**3
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    rates = {"jax": best_rate(lambda: f(a).block_until_ready(), flops)}
    if with_torch:
        import torch

        t = torch.from_numpy(np.asarray(a))
        rates["torch"] = best_rate(lambda: torch.mm(t, t), flops)
    which = max(rates, key=rates.get)
    detail = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in rates.items())
    return rates[which], f"measured best fp32 {n}^3 matmul ({detail} GFLOP/s)"


def mixjax_runner(config, b: int, t: int, steps: int, mesh_shape, devices) -> tuple[Callable[[], float], object]:
    """Compiles and warms up; returns (run() -> tokens/s over ``steps`` steps, trainer)."""
    import jax

    from mixjax.train.loop import TrainConfig, Trainer
    from mixjax.train.optimizer import OptimizerConfig

    trainer = Trainer(config, TrainConfig(batch_size=b, seq_len=t, mesh_shape=mesh_shape, optimizer=OptimizerConfig()), devices)
    state, data = trainer.init(jax.random.key(0), total_steps=10_000), batch(b, t, config.vocab_size)
    holder = [state]

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            holder[0], metrics = trainer.step(holder[0], data)
        jax.block_until_ready(metrics)
        return n * b * t / (time.perf_counter() - start)

    run(2)  # compile + warm up
    return (lambda: run(steps)), trainer


def torch_runner(config, b: int, t: int, steps: int) -> Callable[[], float] | None:
    try:
        import torch
        import transformers
    except ImportError:
        return None
    from mixjax.model.hf import config_to_hf

    hf = config_to_hf(config)
    cls = transformers.Qwen2ForCausalLM if config.qkv_bias else transformers.LlamaForCausalLM
    cfg_cls = transformers.Qwen2Config if config.qkv_bias else transformers.LlamaConfig
    model = cls(cfg_cls(**{k: v for k, v in hf.items() if k not in ("model_type", "architectures", "torch_dtype")}))
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device=device, dtype=dtype).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = torch.tensor(batch(b, t, config.vocab_size)["inputs"], dtype=torch.long, device=device)

    def step():
        loss = model(input_ids=data, labels=data).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        return n * b * t / (time.perf_counter() - start)

    run(2)
    return lambda: run(steps)


def model_config(args):
    import jax

    from mixjax.model.llama import PRESETS

    on_accelerator = jax.default_backend() != "cpu"
    config = dataclasses.replace(PRESETS[args.preset], dtype="bfloat16" if on_accelerator else "float32", attention_impl=args.attention)
    return dataclasses.replace(config, remat=args.remat) if args.remat else config


def measure(args, threads: int | None) -> dict:
    """One process's measurement: both trainers interleaved, ``args.rounds`` rounds."""
    import jax

    from mixjax.train.metrics import total_peak_flops
    from mixjax.train.sharding import batch_split_error, resolve_mesh_shape

    devices = jax.devices()[: args.devices] if args.devices else jax.devices()
    try:
        data, fsdp, _ = resolve_mesh_shape(args.mesh, len(devices))
    except ValueError as err:
        sys.exit(f"train_throughput: --mesh: {err}")
    if batch_split_error(args.batch, args.mesh, len(devices)):
        import math

        rows = math.gcd(args.batch, len(devices))
        sys.exit(f"train_throughput: --batch {args.batch} cannot be split over the {data * fsdp} data-parallel devices of the mesh"
                 f" (data, fsdp) = ({data}, {fsdp}): use --batch {-(-args.batch // (data * fsdp)) * data * fsdp},"
                 f" --mesh {rows},1,{len(devices) // rows} or --devices {rows}")
    config = model_config(args)
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_mixjax, trainer = mixjax_runner(config, args.batch, args.seq, args.steps, args.mesh, devices)
    used = list(trainer.mesh.devices.flat)
    peak = total_peak_flops(used)
    how = f"{len(used)} x {used[0].device_kind} datasheet bf16 dense"
    if peak is None:
        peak, how = measured_cpu_peak(with_torch=not args.no_torch)
    runners = {"mixjax": run_mixjax}
    reference = None if args.no_torch else torch_runner(config, args.batch, args.seq, args.steps)
    if reference is not None:
        runners["torch"] = reference
    load_before = os.getloadavg()[0]
    rates: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(args.rounds):  # interleaved: both trainers see the same load
        for label, run in runners.items():
            rates[label].append(run())
    flops = config.flops_per_token(args.seq)
    return {
        "threads": threads, "devices": len(used), "device_kind": used[0].device_kind, "peak": peak, "peak_source": how,
        "flops_per_token": flops, "params": config.num_params(), "dtype": config.dtype, "rates": rates,
        "load_before": load_before, "load_after": os.getloadavg()[0],
        "torch_missing": reference is None and not args.no_torch,
    }


def child(threads: int, argv: list[str]) -> dict:
    """Measure in a fresh process pinned to ``threads`` cores (affinity set before jax starts)."""
    cores = sorted(os.sched_getaffinity(0))[:threads]
    code = f"import os, sys; os.sched_setaffinity(0, {cores!r}); sys.argv = {[sys.argv[0], *argv, '--child-threads', str(threads)]!r}; exec(open({os.path.abspath(__file__)!r}).read())"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if threads == 1:  # XLA:CPU without its Eigen thread pool, as torch.set_num_threads(1) runs torch
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(results: list[dict], args) -> None:
    first = results[0]
    print(f"{args.preset}: {first['params'] / 1e6:.2f}M params, batch {args.batch} x {args.seq}, {first['dtype']}, "
          f"{first['flops_per_token'] / 1e6:.2f} MFLOP/token; {first['devices']} x {first['device_kind']}; "
          f"{os.cpu_count()} cores; median of {args.rounds} interleaved rounds x {args.steps} steps")
    print(f"{'threads':>7} {'peak GFLOP/s':>13} {'mixjax tok/s':>13} {'MFU':>6} {'torch tok/s':>12} {'MFU':>6} {'ratio':>6}  load before/after")
    for r in results:
        peak, flops = r["peak"], r["flops_per_token"]
        ours = statistics.median(r["rates"]["mixjax"])
        line = f"{r['threads'] or '-':>7} {peak / 1e9:13.1f} {ours:13,.0f} {ours * flops / peak:6.1%}"
        if "torch" in r["rates"]:
            theirs = statistics.median(r["rates"]["torch"])
            ratio = statistics.median(a / b for a, b in zip(r["rates"]["mixjax"], r["rates"]["torch"]))
            line += f" {theirs:12,.0f} {theirs * flops / peak:6.1%} {ratio:6.2f}"
        else:
            line += f" {'(not installed)' if r['torch_missing'] else '-':>12} {'':>6} {'':>6}"
        print(line + f"  {r['load_before']:.2f}/{r['load_after']:.2f}")
    for r in results:
        print(f"  peak at {r['threads'] or '-'} threads: {r['peak_source']}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="demo")
    p.add_argument("--batch", type=int, default=16, help="global batch (rows), split over the data-parallel devices")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--attention", default=None, help="ModelConfig.attention_impl (None/xla, flash)")
    p.add_argument("--remat", default=None, help="ModelConfig.remat (default: the preset's)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--threads", default="1,2", help="CPU only: thread counts, each in its own pinned process")
    p.add_argument("--devices", type=int, default=None, help="use the first N devices (default: all)")
    p.add_argument("--mesh", default=None, help="mesh (data,fsdp,tensor), e.g. 1,-1,1 (default: data parallel over the devices)")
    p.add_argument("--child-threads", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.mesh = tuple(int(x) for x in args.mesh.split(",")) if args.mesh else None
    if args.child_threads is not None:
        print(json.dumps(measure(args, args.child_threads)))
        return
    import jax

    if jax.default_backend() == "cpu":
        argv = [a for a in sys.argv[1:]]
        results = [child(int(n), argv) for n in args.threads.split(",")]
    else:
        results = [measure(args, None)]
    report(results, args)


if __name__ == "__main__":
    main()
