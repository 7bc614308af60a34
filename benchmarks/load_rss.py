"""Peak host RSS and wall time of loading a llama3.2-1b-shaped checkpoint (issue 27).

    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/load_rss.py [--dir /tmp/llama1b-random] [--how sharded|host]
    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/load_rss.py --how convert,restore --repeat 3
    PYTHONPATH=/path/to/an/older/checkout JAX_PLATFORMS=cpu python benchmarks/load_rss.py --how host   # "before"

Writes (once) a random-weights bf16 checkpoint of llama3.2-1b's shapes (config.json and
two safetensors shards, 2.47 GB: 1.236e9 params x 2 bytes), then loads it in a fresh
process and reports that process's peak RSS (VmHWM) and the RSS after the imports (jax
initialised, before reading anything):

- ``host``: ``load_hf_checkpoint`` (every tensor read, then float32 host arrays, np.stack);
- ``sharded``: ``load_hf_params`` as the pipeline now calls it (tensor by tensor onto the
  devices, in the checkpoint's dtype). On CPU the device arrays ARE host memory, so its
  floor is the checkpoint's own 2.47 GB;
- ``convert``: the first array task of an experiment (``load_init_params`` with no
  conversion yet: ``load_hf_params``, then the orbax save into ``<dir>-init/``);
- ``restore``: every later task (``load_init_params`` restoring that conversion).

``--how`` takes a comma list and ``--repeat`` runs the list that many times, interleaved
(the machines are shared: compare figures of one interleaved series), printing the load
average before each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
import time, jax, numpy as np
jax.numpy.zeros(1).block_until_ready()
from mixjax.model import hf
from mixjax.pipeline import converted
base = rss('VmRSS')
start = time.perf_counter()
if sys.argv[2] == 'host':
    config, params = hf.load_hf_checkpoint(sys.argv[1])
else:
    config = hf.check_hf_checkpoint(sys.argv[1])
    if sys.argv[2] == 'sharded':
        params = hf.load_hf_params(sys.argv[1], config)
    else:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = hf.jax_tree_map(lambda _: device, hf._param_makers(lambda n: None, config))
        params = converted.load_init_params(sys.argv[1], config, shardings, sys.argv[3], log=lambda _: None)
    jax.block_until_ready(params)
seconds = time.perf_counter() - start
print(base, rss('VmHWM'), sum(np.asarray(a).nbytes if not hasattr(a, 'nbytes') else a.nbytes for a in jax.tree.leaves(params)), seconds)
"""


HOWS = ("sharded", "host", "convert", "restore")


def measure(directory: Path, how: str, size: int) -> str:
    """One load in a fresh process: a line with its wall time and peak RSS."""
    root = directory.with_name(directory.name + "-init")
    if how == "convert":
        shutil.rmtree(root, ignore_errors=True)  # the experiment's first task: no conversion yet
    elif how == "restore" and not root.exists():
        raise SystemExit(f"--how restore needs a conversion in {root}: run --how convert first")
    out = subprocess.run([sys.executable, "-c", LOAD, str(directory), how, str(root)], capture_output=True, text=True, check=True)
    base, peak, held = (int(x) for x in out.stdout.split()[:3])
    seconds = float(out.stdout.split()[3])
    gb = lambda b: f"{b / 1e9:.2f} GB"
    return (f"{how}: {seconds:.1f} s; checkpoint {gb(size)} (bf16); peak RSS {gb(peak)} = {peak / size:.2f} x the checkpoint;"
            f" after imports {gb(base)}; loading added {gb(peak - base)} = {(peak - base) / size:.2f} x; params held {gb(held)}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=Path, default=Path("/tmp/llama1b-random"))
    p.add_argument("--how", default="sharded", help=f"comma list of {', '.join(HOWS)}")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    hows = args.how.split(",")
    if unknown := [h for h in hows if h not in HOWS]:
        p.error(f"--how {unknown[0]}: choose from {', '.join(HOWS)}")
    size = make_checkpoint(args.dir)
    for _ in range(args.repeat):
        for how in hows:
            print(f"[load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}] {measure(args.dir, how, size)}", flush=True)


if __name__ == "__main__":
    main()
