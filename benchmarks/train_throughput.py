"""Training throughput (tokens/s) and MFU of the mixjax trainer, next to Hugging Face
transformers + torch training the same config, in the same run.

    python benchmarks/train_throughput.py [--preset demo] [--batch 16] [--seq 256] [--steps 10] [--rounds 3]
    # GPU (1B, Llama-3.2-1B shape, bf16, packed-sequence flash attention):
    python benchmarks/train_throughput.py --preset llama3.2-1b --seq 4096 --batch 4 --attention flash --no-torch

The two trainers run interleaved, ``--rounds`` times ``--steps`` steps each, so both see
the same machine load; the figures are medians over rounds and the ratio is the median
of the per-round ratios (the machine this runs on is often shared: quote the load).

MFU = achieved model FLOP/s / peak FLOP/s. On GPU the peak is the device's dense bf16
figure (H100 SXM: 989 TFLOP/s); on CPU, where no meaningful datasheet peak exists, it is
the FLOP/s of a large float32 matmul measured in this run (so CPU "MFU" reads as "share of
what this machine's matmul reaches"). Model FLOPs per token: ModelConfig.flops_per_token.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.model.llama import PRESETS
from mixjax.train.loop import TrainConfig, Trainer
from mixjax.train.metrics import peak_flops
from mixjax.train.optimizer import OptimizerConfig

def peak_for_mfu() -> tuple[float, str]:
    """The datasheet peak of the accelerator (the trainer's table), or on CPU the measured
    FLOP/s of a large float32 matmul."""
    device = jax.devices()[0]
    peak = peak_flops(device.device_kind) if device.platform != "cpu" else None
    if peak:
        return peak, f"{device.device_kind} datasheet bf16 dense"
    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(5):
        out = f(a)
    out.block_until_ready()
    return 5 * 2 * n**3 / (time.perf_counter() - start), "measured fp32 2048^3 matmul"


def batch(b: int, t: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (b, t + 1)).astype(np.int32)
    return {
        "inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((b, t), np.float32),
        "segment_ids": np.ones((b, t), np.int32), "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
    }


def mixjax_runner(config, b: int, t: int, steps: int) -> Callable[[], float]:
    """Compiles and warms up; returns run() -> tokens/s over ``steps`` steps."""
    trainer = Trainer(config, TrainConfig(batch_size=b, seq_len=t, optimizer=OptimizerConfig()))
    state, data = trainer.init(jax.random.key(0), total_steps=10_000), batch(b, t, config.vocab_size)
    holder = [state]

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            holder[0], metrics = trainer.step(holder[0], data)
        jax.block_until_ready(metrics)
        return n * b * t / (time.perf_counter() - start)

    run(2)  # compile + warm up
    return lambda: run(steps)


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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="demo")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--attention", default=None, help="ModelConfig.attention_impl (None/xla, flash)")
    p.add_argument("--remat", default=None, help="ModelConfig.remat (default: the preset's)")
    p.add_argument("--no-torch", action="store_true")
    args = p.parse_args()
    on_gpu = jax.devices()[0].platform == "gpu"
    config = dataclasses.replace(PRESETS[args.preset], dtype="bfloat16" if on_gpu else "float32", attention_impl=args.attention)
    if args.remat:
        config = dataclasses.replace(config, remat=args.remat)
    peak, how = peak_for_mfu()
    flops = config.flops_per_token(args.seq)
    load = f"; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores" if not on_gpu else ""
    print(f"{args.preset}: {config.num_params() / 1e6:.2f}M params, batch {args.batch} x {args.seq}, {config.dtype}, "
          f"{flops / 1e6:.2f} MFLOP/token; peak {peak / 1e12:.2f} TFLOP/s ({how}); device {jax.devices()[0].device_kind}{load}")
    runners = {"mixjax (jax.jit, sharded)": mixjax_runner(config, args.batch, args.seq, args.steps)}
    reference = None if args.no_torch else torch_runner(config, args.batch, args.seq, args.steps)
    if reference is not None:
        runners["transformers + torch"] = reference
    rates: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(args.rounds):  # interleaved: both trainers see the same load
        for label, run in runners.items():
            rates[label].append(run())
    print(f"{'trainer':<28} {'tokens/s':>12} {'MFU':>7}   (median of {args.rounds} rounds x {args.steps} steps)")
    for label, values in rates.items():
        rate = statistics.median(values)
        print(f"{label:<28} {rate:12,.0f} {rate * flops / peak:7.1%}")
    if reference is None and not args.no_torch:
        print(f"{'transformers + torch':<28} {'(not installed: pip install mixjax[hf])':>20}")
    if reference is not None:
        ours, theirs = rates["mixjax (jax.jit, sharded)"], rates["transformers + torch"]
        if not on_gpu:
            print(f"load average after: {os.getloadavg()[0]:.2f}")
        print(f"mixjax/torch tokens/s ratio: {statistics.median(a / b for a, b in zip(ours, theirs)):.2f}")


if __name__ == "__main__":
    main()
