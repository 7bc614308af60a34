"""File writes shared by the trainer, the pipeline and the CLIs: every file mixjax writes
for others to read is written atomically (readers, and a crash, see the old file or the
new one, never half of one), through :func:`atomic_path`."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; on a normal exit it replaces ``path``
    (``os.replace``: atomic on POSIX and Windows within one filesystem), on an exception it
    is removed and ``path`` is left as it was. The temporary name is unique per call, so
    concurrent writers (processes sharing a cache) never write into each other's file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # created by the writer: umask applies
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, payload) -> None:
    """Write ``payload`` as indented JSON, atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1))


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
