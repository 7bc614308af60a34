"""One conversion of the init checkpoint per experiment, reused by every run's process.

Converting a Hugging Face checkpoint (:func:`mixjax.model.hf.load_hf_params`: read every
tensor, transpose, stack the layers) is CPU work that each SLURM array task (one
perturbation run each, 4k+1 of them) would otherwise repeat. The first process that needs
the init params converts once and saves them into the experiment directory as an orbax
checkpoint of the unboxed param tree, in mixjax's layout and the load's dtype:

    <experiment_dir>/init/<key>/params         orbax StandardSave of the params
    <experiment_dir>/init/<key>/source.json    what ``key`` is the digest of

``key`` is a digest of the source checkpoint's config.json and *.safetensors (names, sizes,
mtimes: :func:`source_fingerprint`), the stored dtype and :data:`LAYOUT`. Every later
process restores from it straight into its shardings (orbax reads each process's own
shards; no host copy of the whole tree). A source that changed has another key: the next
process to load converts again and removes the older conversions.

Atomicity: a conversion is written under ``init/tmp-<key>-<nonce>/`` and renamed to
``init/<key>`` in one ``rename(2)``; when two tasks convert at once, the first rename
wins and the other discards its copy (renaming onto a non-empty directory fails), so no
reader ever sees a partial conversion and no lock is needed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mixjax.io import barrier, is_primary_process
from mixjax.model import hf
from mixjax.model.llama import ModelConfig
from mixjax.pipeline.fingerprint import digest, directory_stamp
from mixjax.train.preemption import any_process

LAYOUT = 1  # bump when mixjax's param layout (hf._param_makers) changes: older conversions are then stale
# orbax's bytes in flight (its default is 96 GB: the whole tree of an 8B model in host
# memory at once): about one array, as load_hf_params holds one param, but at least this
# many GB. orbax refuses a shard at or over its limit (ValueError), hence the margin.
MIN_IN_FLIGHT_GB = 0.25


def _checkpointer(largest_bytes: int):
    """A synchronous orbax Checkpointer whose host memory in flight is bounded by
    max(MIN_IN_FLIGHT_GB, 1.01 x ``largest_bytes``) (the largest array: a bound on any shard)."""
    import orbax.checkpoint as ocp

    limit = max(MIN_IN_FLIGHT_GB, 1.01 * largest_bytes / 1e9)
    return ocp.Checkpointer(ocp.StandardCheckpointHandler(save_concurrent_gb=limit, restore_concurrent_gb=limit))


def source_fingerprint(checkpoint: str | Path, dtype: str | None = None) -> dict:
    """What a conversion of ``checkpoint`` depends on: the resolved path, [size, mtime_ns]
    of its config.json and *.safetensors files, the stored dtype (None: the checkpoint's
    own) and :data:`LAYOUT`. Other files of the directory (tokenizer, README) are left out."""
    stamp = directory_stamp(checkpoint)
    files = {name: v for name, v in stamp["files"].items() if name == "config.json" or name.endswith(".safetensors")}
    return {"path": stamp["path"], "files": files, "dtype": dtype, "layout": LAYOUT}


def conversion_key(fingerprint: dict) -> str:
    """The directory name of a conversion: 16 hex digits of the fingerprint's sha256."""
    return digest(fingerprint)[:16]


def restore_converted(directory: Path, shardings: Any) -> Any:
    """The params saved in ``directory/params``, each array restored into its sharding.

    Args:
      directory: a conversion (``init/<key>``).
      shardings: a tree of jax Shardings shaped as the unboxed params.
    Returns:
      The unboxed param tree of jax.Arrays, in the stored dtype.
    Raises:
      ValueError: the saved tree is not the one ``shardings`` describes (delete the
        directory; a layout change should have bumped :data:`LAYOUT`).
    """
    import orbax.checkpoint as ocp

    saved = _checkpointer(0).metadata(directory / "params").item_metadata.tree
    if jax.tree.structure(saved) != jax.tree.structure(shardings):
        raise ValueError(f"{directory}: the converted params' tree differs from the model's; delete {directory} to convert again")
    abstract = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), saved, shardings)
    largest = max(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(abstract))
    return _checkpointer(largest).restore(directory / "params", args=ocp.args.StandardRestore(abstract))


def _agreed_nonce() -> str:
    """A random name part that every process shares (process 0's; one broadcast with several)."""
    nonce = np.int64(uuid.uuid4().int % (2**62))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        nonce = multihost_utils.broadcast_one_to_all(nonce)
    return f"{int(nonce):016x}"


def save_converted(root: Path, fingerprint: dict, params: Any) -> bool:
    """Save ``params`` as the conversion ``root/<key>`` (every process calls it; orbax saves
    each process's shards). Returns True when this save became the conversion, False when
    another task's finished first (ours is then deleted). Older conversions in ``root`` (other
    keys) are removed by the winner; half-written ``tmp-*`` directories are left alone (they
    may be another task's conversion in progress)."""
    import orbax.checkpoint as ocp

    key = conversion_key(fingerprint)
    tmp = root / f"tmp-{key}-{_agreed_nonce()}"
    largest = max(a.nbytes for a in jax.tree.leaves(params))
    _checkpointer(largest).save(tmp / "params", args=ocp.args.StandardSave(params))
    won = True
    if is_primary_process():
        (tmp / "source.json").write_text(json.dumps(fingerprint, indent=1))
        try:
            os.rename(tmp, root / key)
        except OSError:  # ENOTEMPTY / EEXIST: another task's conversion is in place
            won = False
            shutil.rmtree(tmp, ignore_errors=True)
        if won:
            for old in root.iterdir():
                if old.is_dir() and old.name != key and not old.name.startswith("tmp-"):
                    shutil.rmtree(old, ignore_errors=True)
    barrier(f"mixjax-init-conversion-{key}")
    return won


def load_init_params(
    checkpoint: str | Path, config: ModelConfig, shardings: Any, root: str | Path, *,
    dtype: str | None = None, log: Callable[[str], None] = print,
) -> Any:
    """The init checkpoint's params on their devices: restored from the experiment's
    conversion when one matches the source, else loaded from the safetensors
    (:func:`mixjax.model.hf.load_hf_params`) and saved as that conversion.

    Args:
      checkpoint: the HF model directory (config.json, *.safetensors).
      config: its ModelConfig (``hf.check_hf_checkpoint``).
      shardings: a tree of jax Shardings shaped as the unboxed params (a Trainer's
        ``state_shardings.params``).
      root: where conversions live (the pipeline passes ``<experiment_dir>/init``).
      dtype: the stored arrays' dtype; None keeps the checkpoint's (bf16 for Llama-3).
      log: one line saying which of the two happened.
    Returns:
      The unboxed param tree of jax.Arrays, bit-identical either way.
    Raises:
      UnsupportedCheckpoint: from the conversion (a tensor not consumed, or missing).
    """
    root = Path(root).absolute()  # orbax refuses relative paths (the demo's workdir is "experiments")
    fingerprint = source_fingerprint(checkpoint, dtype)
    directory = root / conversion_key(fingerprint)
    if not any_process(not (directory / "params").is_dir()):  # every process sees the conversion
        log(f"init params: restored from the conversion {directory}")
        return restore_converted(directory, shardings)
    params = hf.load_hf_params(checkpoint, config, shardings, dtype=dtype)
    root.mkdir(parents=True, exist_ok=True)
    won = save_converted(root, fingerprint, params)
    log(f"init params: converted {checkpoint} " + (f"into {directory}" if won else f"(another task's conversion {directory} was first)"))
    return params
