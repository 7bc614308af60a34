"""File writes shared by the trainer and the pipeline."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomic(path: str | Path, payload) -> None:
    """Write JSON so that readers (and a crash) see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def is_primary_process() -> bool:
    """True on the one process (index 0) that writes shared files in a multi-host run."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process got here (a no-op with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
