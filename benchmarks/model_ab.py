"""Same-process A/B of two versions of mixjax/model/llama.py (e.g. before/after a change),
next to transformers + torch, on one jitted AdamW train step like the trainer's.

    PYTHONPATH=. python benchmarks/model_ab.py --before 0d6d15a [--threads 1] [--rounds 4]

Both model versions and torch run interleaved, round by round, so they see the same
load; ratios are medians of per-round ratios. ``--threads 1`` pins XLA and torch to one
thread each: on a shared machine this is the load-robust comparison (torch's OpenMP
threads spin under contention, which makes multi-threaded torch figures swing by 5x).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time


def load_revision(rev: str):
    source = subprocess.run(["git", "show", f"{rev}:mixjax/model/llama.py"], capture_output=True, text=True, check=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "llama_before.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("llama_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["llama_before"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--before", required=True, help="git revision of the 'before' llama.py")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="steps per round")
    p.add_argument("--threads", type=int, default=0, help="1: single-threaded XLA and torch; 0: defaults")
    args = p.parse_args()
    if args.threads == 1:
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"

    import jax
    import jax.numpy as jnp
    import optax
    from flax import linen as nn

    from benchmarks.train_throughput import batch, torch_runner
    from mixjax.model import llama as after

    before = load_revision(args.before)
    data = {k: jnp.asarray(v) for k, v in batch(args.batch, args.seq, after.PRESETS["demo"].vocab_size).items()}

    def jax_runner(module, config):
        params = nn.unbox(module.Decoder(config).init(jax.random.key(0), data["inputs"][:1, :8], data["positions"][:1, :8], data["segment_ids"][:1, :8])["params"])
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4))

        def loss(p, d):
            logits = module.Decoder(config).apply({"params": p}, d["inputs"], d["positions"], d["segment_ids"])
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, d["targets"])
            return jnp.sum(ce * d["weights"]) / jnp.sum(d["weights"])

        def step(state, d):
            p, o = state
            updates, o = tx.update(jax.grad(loss)(p, d), o, p)
            return optax.apply_updates(p, updates), o

        step = jax.jit(step, donate_argnums=0)
        holder = [(params, tx.init(params))]

        def run() -> float:
            start = time.perf_counter()
            for _ in range(args.steps):
                holder[0] = step(holder[0], data)
            jax.block_until_ready(holder[0])
            return args.steps * args.batch * args.seq / (time.perf_counter() - start)

        run()
        return run

    runners = {
        f"before ({args.before})": jax_runner(before, dataclasses.replace(before.PRESETS["demo"], dtype="float32")),
        "after (worktree)": jax_runner(after, dataclasses.replace(after.PRESETS["demo"], dtype="float32")),
    }
    if args.threads == 1:
        import torch

        torch.set_num_threads(1)
    reference = torch_runner(dataclasses.replace(after.PRESETS["demo"], dtype="float32"), args.batch, args.seq, args.steps)
    if reference is not None:
        runners["transformers + torch"] = reference
    rates = {k: [] for k in runners}
    for _ in range(args.rounds):
        for k, run in runners.items():
            rates[k].append(run())
    print(f"demo model, batch {args.batch} x {args.seq}, float32, threads {'1' if args.threads == 1 else 'default'}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; median of {args.rounds} rounds x {args.steps} steps")
    first = next(iter(rates.values()))
    for k, values in rates.items():
        vs_torch = (f"  /torch {statistics.median(a / b for a, b in zip(values, rates['transformers + torch'])):.2f}"
                    if reference is not None else "")
        print(f"{k:26s} {statistics.median(values):10,.0f} tokens/s  /before {statistics.median(a / b for a, b in zip(values, first)):.2f}{vs_torch}")


if __name__ == "__main__":
    main()
