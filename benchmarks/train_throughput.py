"""Training throughput (tokens/s) and MFU of the mixjax trainer, next to Hugging Face
transformers + torch training the same config, in the same run.

    python benchmarks/train_throughput.py [--preset demo] [--batch 16] [--seq 256] [--steps 20]

MFU = achieved model FLOP/s / peak FLOP/s. On GPU the peak is the device's dense bf16
figure (H100 SXM: 989 TFLOP/s); on CPU, where no meaningful datasheet peak exists, it is
the FLOP/s of a large float32 matmul measured in this run (so CPU "MFU" reads as "share of
what this machine's matmul reaches"). Model FLOPs per token: ModelConfig.flops_per_token.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.model.llama import PRESETS
from mixjax.train.loop import TrainConfig, Trainer
from mixjax.train.optimizer import OptimizerConfig

GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops() -> tuple[float, str]:
    device = jax.devices()[0]
    if device.platform == "gpu":
        for name, peak in GPU_PEAK_BF16.items():
            if name in device.device_kind:
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


def time_mixjax(config, b: int, t: int, steps: int) -> float:
    trainer = Trainer(config, TrainConfig(batch_size=b, seq_len=t, optimizer=OptimizerConfig()), steps + 2)
    state, data = trainer.init(jax.random.key(0)), batch(b, t, config.vocab_size)
    for _ in range(2):  # compile + warm up
        state, metrics = trainer.step(state, data)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = trainer.step(state, data)
    jax.block_until_ready(metrics)
    return steps * b * t / (time.perf_counter() - start)


def time_torch(config, b: int, t: int, steps: int) -> float | None:
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

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * b * t / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="demo")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    on_gpu = jax.devices()[0].platform == "gpu"
    config = dataclasses.replace(PRESETS[args.preset], dtype="bfloat16" if on_gpu else "float32")
    peak, how = peak_flops()
    flops = config.flops_per_token(args.seq)
    print(f"{args.preset}: {config.num_params() / 1e6:.2f}M params, batch {args.batch} x {args.seq}, "
          f"{flops / 1e6:.2f} MFLOP/token; peak {peak / 1e12:.2f} TFLOP/s ({how}); device {jax.devices()[0].device_kind}")
    print(f"{'trainer':<28} {'tokens/s':>12} {'MFU':>7}")
    for label, fn in (("mixjax (jax.jit, sharded)", time_mixjax), ("transformers + torch", time_torch)):
        rate = fn(config, args.batch, args.seq, args.steps)
        if rate is None:
            print(f"{label:<28} {'(not installed: pip install mixjax[hf])':>20}")
        else:
            print(f"{label:<28} {rate:12,.0f} {rate * flops / peak:7.1%}")


if __name__ == "__main__":
    main()
