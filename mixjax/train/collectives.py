"""The collectives XLA's SPMD partitioner puts into a compiled step: how many, where
(inside a ``while`` body, i.e. once per layer of a scanned model, or once), which element
type and how many bytes. Read from the HLO right after the ``spmd-partitioning`` pass,
which is the same on every backend: later XLA:CPU passes (float-normalization-bf16)
rewrite bf16 collectives as float32 ones (XLA:CPU has none in bf16), XLA:GPU keeps them,
so the final CPU HLO would misreport the dtypes a GPU moves.
"""

from __future__ import annotations

import collections
import math
import re
import shutil
import tempfile
from pathlib import Path

from jax.stages import Lowered


def partitioned_hlo(lowered: Lowered) -> str:
    """The HLO text of ``lowered`` (e.g. ``jax.jit(f).lower(...)``) right after SPMD
    partitioning: compiles it once more with XLA's dump options pointed at a temporary
    directory. Raises FileNotFoundError when XLA wrote no such dump."""
    directory = tempfile.mkdtemp(prefix="mixjax-hlo-")
    try:
        lowered.compile(compiler_options={"xla_dump_to": directory, "xla_dump_hlo_pass_re": "spmd-partitioning"})
        files = sorted(Path(directory).glob("*after_spmd-partitioning*.txt"))
        if not files:
            raise FileNotFoundError(f"{directory}: XLA wrote no HLO after spmd-partitioning")
        return files[-1].read_text()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (?P<type>\(?[a-z0-9]+\[[^=]*?) (?P<op>[a-z\-]+)\(")


def computations(hlo: str) -> dict[str, list[str]]:
    """Computation name -> its instruction lines."""
    out: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head and not line.startswith(" "):
            name = head.group(1)
            out[name] = []
        elif name is not None and line.strip() and line.strip() != "}":
            out[name].append(line)
    return out


def loop_bodies(comps: dict[str, list[str]]) -> set[str]:
    """Computations run per loop iteration: while bodies and what they call."""
    bodies = {m for lines in comps.values() for line in lines for m in re.findall(r"body=%?([\w.\-]+)", line)}
    frontier = set(bodies)
    while frontier:
        called = {c for b in frontier for line in comps.get(b, ()) for c in re.findall(r"(?:to_apply|calls|body|condition)=%?([\w.\-]+)", line)}
        frontier = called - bodies
        bodies |= frontier
    return bodies


def _trivial(line: str) -> bool:
    """A collective over groups of one device (e.g. a psum over a size-1 axis): no traffic."""
    groups = re.search(r"replica_groups=\{(\{[^=]*?\})\}", line)
    return groups is not None and all("," not in g for g in re.findall(r"\{([^{}]*)\}", groups.group(1)))


BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1}


def _shapes(type_text: str) -> list[tuple[str, int]]:
    """(dtype, elements) of each array in an HLO type (an array or a tuple of them)."""
    return [(d, math.prod(int(x) for x in dims.split(",") if x)) for d, dims in re.findall(r"([a-z]+[0-9]*)\[([0-9,]*)\]", type_text)]


def count_collectives(hlo: str) -> dict[tuple[str, str, str], list[int]]:
    """(where, op, element type) -> [count, MiB of results]; where: 'per layer' (in a while
    body) or 'once'. An all-reduce whose result only feeds a dynamic-slice (the device's
    shard) is 'all-reduce+slice': the pattern XLA:GPU's ReduceScatterCreator pass turns
    into a reduce-scatter (XLA:CPU has no such pass)."""
    comps = computations(hlo)
    bodies = loop_bodies(comps)
    counts: dict = collections.defaultdict(lambda: [0, 0])
    for name, lines in comps.items():
        for line in lines:
            line = re.sub(r"/\*.*?\*/", "", line)  # tuple types carry /*index=5*/ comments
            m = INSTRUCTION.match(line)
            if m is None or m.group("op").removesuffix("-start") not in KINDS or _trivial(line):
                continue
            op = m.group("op").removesuffix("-start")
            result = line.split("=", 1)[0].strip().removeprefix("ROOT ").lstrip("%")
            users = [u for u in lines if re.search(rf"[(,]\s*%{re.escape(result)}[,)]", u)]
            if op == "all-reduce" and users and all(" dynamic-slice(" in u for u in users):
                op = "all-reduce+slice"
            shapes = _shapes(m.group("type"))
            entry = counts[("per layer" if name in bodies else "once", op, shapes[-1][0])]
            entry[0] += 1
            entry[1] += sum(n * BYTES.get(d, 4) for d, n in shapes)
    return {k: [n, b / 2**20] for k, (n, b) in counts.items()}


