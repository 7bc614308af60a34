"""Peak host RSS of loading a llama3.2-1b-shaped checkpoint (issue 27 item 3).

    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/load_rss.py [--dir /tmp/llama1b-random] [--how sharded|host]
    PYTHONPATH=/path/to/an/older/checkout JAX_PLATFORMS=cpu python benchmarks/load_rss.py --how host   # "before"

Writes (once) a random-weights bf16 checkpoint of llama3.2-1b's shapes (config.json and
two safetensors shards, 2.47 GB: 1.236e9 params x 2 bytes), then loads it in a fresh
process and reports that process's peak RSS (VmHWM) and the RSS after the imports (jax
initialised, before reading anything):

- ``host``: ``load_hf_checkpoint`` (every tensor read, then float32 host arrays, np.stack);
- ``sharded``: ``load_hf_params`` as the pipeline now calls it (tensor by tensor onto the
  devices, in the checkpoint's dtype). On CPU the device arrays ARE host memory, so its
  floor is the checkpoint's own 2.47 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from mixjax.model.hf import config_to_hf, hf_tensor_names
from mixjax.model.llama import PRESETS

PRESET = PRESETS["llama3.2-1b"]


def hf_shape(name: str) -> tuple[int, ...]:
    """The HF tensor shape of ``name`` for llama3.2-1b."""
    c, h = PRESET, PRESET.head_size
    shapes = {"embed_tokens": (c.vocab_size, c.dim), "norm.weight": (c.dim,), "layernorm": (c.dim,), "q_proj": (c.n_heads * h, c.dim),
              "k_proj": (c.n_kv_heads * h, c.dim), "v_proj": (c.n_kv_heads * h, c.dim), "o_proj": (c.dim, c.n_heads * h),
              "gate_proj": (c.hidden_dim, c.dim), "up_proj": (c.hidden_dim, c.dim), "down_proj": (c.dim, c.hidden_dim)}
    return next(shape for key, shape in shapes.items() if key in name)


def make_checkpoint(directory: Path) -> int:
    """Write the random checkpoint (unless present); its tensor bytes."""
    names = sorted(hf_tensor_names(PRESET))
    size = sum(int(np.prod(hf_shape(n))) * 2 for n in names)
    if (directory / "config.json").exists():
        return size
    import ml_dtypes

    from mixjax.model.hf import write_safetensors

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for part, chunk in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        tensors = {n: (rng.standard_normal(hf_shape(n), np.float32) * 0.02).astype(ml_dtypes.bfloat16) for n in chunk}
        write_safetensors(directory / f"model-0000{part + 1}-of-00002.safetensors", tensors)
        del tensors
    (directory / "config.json").write_text(json.dumps(config_to_hf(PRESET) | {"torch_dtype": "bfloat16"}))
    return size


LOAD = """
import sys
def rss(field):
    return int(next(l for l in open('/proc/self/status') if l.startswith(field)).split()[1]) * 1024
import jax, numpy as np
jax.numpy.zeros(1).block_until_ready()
base = rss('VmRSS')
from mixjax.model import hf
if sys.argv[2] == 'host':
    config, params = hf.load_hf_checkpoint(sys.argv[1])
else:
    config = hf.check_hf_checkpoint(sys.argv[1])
    params = hf.load_hf_params(sys.argv[1], config)
    jax.block_until_ready(params)
print(base, rss('VmHWM'), sum(np.asarray(a).nbytes if not hasattr(a, 'nbytes') else a.nbytes for a in jax.tree.leaves(params)))
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=Path, default=Path("/tmp/llama1b-random"))
    p.add_argument("--how", choices=("sharded", "host"), default="sharded")
    args = p.parse_args()
    size = make_checkpoint(args.dir)
    out = subprocess.run([sys.executable, "-c", LOAD, str(args.dir), args.how], capture_output=True, text=True, check=True)
    base, peak, held = (int(x) for x in out.stdout.split())
    gb = lambda b: f"{b / 1e9:.2f} GB"
    print(f"{args.how}: checkpoint {gb(size)} (bf16); peak RSS {gb(peak)} = {peak / size:.2f} x the checkpoint;"
          f" after imports {gb(base)}; loading added {gb(peak - base)} = {(peak - base) / size:.2f} x; params held {gb(held)}")


if __name__ == "__main__":
    main()
