"""The launch scripts, run on CPU against faked cluster tools (issue 19 items 1, 2, 4):
``bash -n`` and shellcheck; the multi-node SLURM job makes its one process per node see
all the node's GPUs (faked SLURM variables, a fake ``srun``, the real
jax.distributed.initialize); every ``--output`` directory exists in the repository; the TPU
pod script hands every argument to the workers' shell quoted."""

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPTS = sorted((ROOT / "launch").glob("*.sh")) + sorted((ROOT / "launch").glob("*.sbatch"))


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script):
    out = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def _directives(script: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", script.read_text(), re.M))


@pytest.mark.parametrize("script", sorted((ROOT / "launch").glob("*.sbatch")), ids=lambda p: p.name)
def test_sbatch_log_directories_exist_in_the_repository(script):
    """SLURM opens --output before the script runs: a missing directory fails the job with no log."""
    outputs = [v for k, v in _directives(script).items() if k in ("output", "error")]
    assert outputs
    for out in outputs:
        directory = ROOT / Path(out).parent
        assert directory.is_dir(), out
        if shutil.which("git") and (ROOT / ".git").exists():
            tracked = subprocess.run(["git", "ls-files", str(directory)], cwd=ROOT, capture_output=True, text=True).stdout
            assert tracked.strip(), f"{directory} is not tracked by git: a fresh clone would not have it"


PROBE = """
import json, sys
import jax
jax.distributed.initialize()
from jax._src import xla_bridge  # the flag jax.distributed.initialize sets; the CUDA plugin reads it
print(json.dumps({"visible": xla_bridge.CUDA_VISIBLE_DEVICES.value, "processes": jax.process_count(),
                  "process": jax.process_index(), "argv": sys.argv[1:]}))
jax.distributed.shutdown()
"""


@pytest.mark.parametrize("gpus", [None, "4"])
def test_slurm_multinode_process_sees_all_gpus_of_its_node(tmp_path, gpus):
    """As srun starts it (SLURM_LOCALID=0, one task per node), the process initialises
    jax.distributed with every GPU of the node visible (JAX restricts each SLURM process
    to the GPU numbered SLURM_LOCALID unless told otherwise)."""
    directives = _directives(ROOT / "launch" / "slurm_multinode.sbatch")
    assert directives["ntasks-per-node"] == "1" and "gpus-per-task" not in directives
    per_node = int(gpus or directives["gpus-per-node"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "probe.py").write_text(PROBE)
    # srun PROGRAM ARGS...: run the probe in place of PROGRAM (python), with ARGS.
    _executable(bin_dir / "srun", f'#!/usr/bin/env bash\nshift\nexec {sys.executable} {tmp_path / "probe.py"} "$@"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_"))}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}", JAX_PLATFORMS="cpu", JAX_COORDINATOR_PORT=str(_free_port()),
        SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0",
    )
    if gpus:
        env["SLURM_GPUS_ON_NODE"] = gpus
    out = subprocess.run(
        ["bash", str(ROOT / "launch" / "slurm_multinode.sbatch"), "configs/demo.py", "--set", "train.mesh_shape=(1,-1,1)"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["visible"] == ",".join(map(str, range(per_node)))  # without the fix: "0"
    assert (report["processes"], report["process"]) == (1, 0)
    assert report["argv"] == ["-m", "mixjax.run", "--config", "configs/demo.py", "--distributed", "--no-progress",
                              "--set", "train.mesh_shape=(1,-1,1)"]


def test_tpu_pod_quotes_every_argument(tmp_path):
    """The workers' shell receives each argument as given: parentheses, spaces, quotes, $."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    (home / "mixjax").mkdir(parents=True)
    record = tmp_path / "record.jsonl"
    dump = f'#!{sys.executable}\nimport json, sys\nopen({str(record)!r}, "a").write(json.dumps(sys.argv) + "\\n")\n'
    for name in ("gcloud", "pip", "python"):
        _executable(bin_dir / name, dump)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(home))
    args = ["--set", "train.mesh_shape=(1,-1,1)", "name=my run", "tokenizer=it's", "workdir=$HOME/x;rm -rf y", "--stages", "plan,perturb"]
    config = "configs/my config.py"
    subprocess.run(["bash", str(ROOT / "launch" / "tpu_pod.sh"), "my-tpu", "us-central2-b", config, *args], env=env, check=True, timeout=60)
    gcloud = json.loads(record.read_text().splitlines()[0])
    assert gcloud[1:6] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"] and "--worker=all" in gcloud
    remote = gcloud[gcloud.index("--command") + 1]
    subprocess.run(["bash", "-n", "-c", remote], check=True)  # unquoted: "syntax error near unexpected token `('"
    record.unlink()
    subprocess.run(["bash", "-c", remote], env=env, check=True, timeout=60, cwd=tmp_path)  # as a worker runs it
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert Path(calls[0][0]).name == "pip"
    assert Path(calls[1][0]).name == "python"
    assert calls[1][1:] == ["-m", "mixjax.run", "--config", config, "--distributed", "--no-progress", *args]
