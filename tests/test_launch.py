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
    # srun [OPTIONS] PROGRAM ARGS...: record the options, run the probe in place of PROGRAM (python), with ARGS.
    _executable(bin_dir / "srun", f'#!/usr/bin/env bash\nwhile [[ $1 == -* ]]; do echo "$1" >> {tmp_path / "srun_options"}; shift; done\n'
                f'shift\nexec {sys.executable} {tmp_path / "probe.py"} "$@"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_"))}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}", JAX_PLATFORMS="cpu", JAX_COORDINATOR_PORT=str(_free_port()),
        SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0",
        SLURM_SUBMIT_DIR=str(ROOT), SLURM_CPUS_PER_TASK="32",
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
                              "--set", "train.dcn_mesh_shape=(-1,1,1)", "--set", "train.mesh_shape=(1,-1,1)"]
    assert (tmp_path / "srun_options").read_text().split() == ["--cpus-per-task=32"]  # srun does not inherit it from sbatch


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


def _gpu_env() -> dict[str, str]:
    out = subprocess.run(["bash", "-c", f"source {ROOT / 'launch' / 'gpu_env.sh'} && env"], capture_output=True, text=True,
                         check=True, env={k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION")})
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def test_gpu_env_flags_parse_in_the_tested_jaxlib():
    """Every XLA GPU flag the SLURM scripts set is known to this jaxlib (XLA parses GPU flags
    on CPU too; an unknown one aborts the process at startup, as on the cluster)."""
    env = _gpu_env()
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9"
    flags = env["XLA_FLAGS"].split()
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags and "--xla_gpu_enable_pipelined_all_gather=true" in flags
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.numpy.ones(2).sum())"], capture_output=True, text=True,
                         env=dict(os.environ, XLA_FLAGS=env["XLA_FLAGS"], JAX_PLATFORMS="cpu"), timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "2.0", out.stderr[-1000:]


@pytest.mark.parametrize("script", sorted((ROOT / "launch").glob("*.sbatch")), ids=lambda p: p.name)
def test_sbatch_scripts_ask_for_memory_cpus_and_the_preemption_signal(script):
    directives = _directives(script)
    assert directives["mem"] == "0" and directives["cpus-per-task"] == "32" and "USR1@300" in directives["signal"]
    assert "requeue" in script.read_text() and "gpu_env.sh" in script.read_text()


def test_submit_multinode_checks_the_config_before_sbatch(tmp_path):
    """The multinode example with the paper config: 4 nodes stop before sbatch (exit 2,
    with the fix); 2 nodes go to sbatch --nodes=2."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "sbatch_args"
    _executable(bin_dir / "sbatch", f'#!/usr/bin/env bash\necho "$@" > {record}\n')
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    for name in ("if", "math", "code"):
        (tmp_path / f"{name}.jsonl").write_text("")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", MIXJAX_CKPT=str(tmp_path / "ckpt"), MIXJAX_DATA=str(tmp_path),
               JAX_PLATFORMS="cpu")
    submit = ["bash", "launch/submit_multinode.sh"]
    out = subprocess.run([*submit, "4", "configs/paper_if_math_code.py"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "cannot be split over the 32 data-parallel devices" in out.stderr and not record.exists()
    out = subprocess.run([*submit, "2", "configs/paper_if_math_code.py"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "train mesh (data, fsdp, tensor) = (2, 8, 1)" in out.stdout
    assert record.read_text().split() == ["--nodes=2", "--gpus-per-node=8", "launch/slurm_multinode.sbatch", "configs/paper_if_math_code.py"]
