"""Multi-host training on one machine: two processes joined by jax.distributed (CPU
collectives through gloo) train the same tiny run as one process, to the same losses,
and only process 0 writes the run's files.

Run as a script (``python tests/test_multihost.py WORKER PROCESSES PORT WORKDIR``) it is one
worker process.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

MAX_STEPS = 6


def run_config():
    from mixjax.train.loop import TrainConfig
    from mixjax.train.optimizer import OptimizerConfig

    return TrainConfig(seq_len=64, batch_size=4, epochs=1, max_steps=MAX_STEPS, eval_every=3, checkpoint_every=MAX_STEPS, prefetch=0, optimizer=OptimizerConfig(learning_rate=3e-3))


def tiny_run(workdir):
    """The run both sides train: returns the TrainResult."""
    from mixjax.data.domain import DomainSpec, load_domains
    from mixjax.data.pipeline import select_mixture
    from mixjax.data.tokenizer import ByteTokenizer
    from mixjax.model.llama import ModelConfig
    from mixjax.train.loop import Trainer, train

    model = ModelConfig(vocab_size=263, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64, dtype="float32", rope_theta=10_000.0, tie_embeddings=True)
    domains = load_domains([DomainSpec(n, (f"synthetic:{n}:120",), 8) for n in ("instruct", "math")], ByteTokenizer(), 65)
    examples = select_mixture(domains, {"instruct": 1500, "math": 1500}, seed=0)
    return train(Trainer(model, run_config()), run_config(), examples, {n: d.val for n, d in domains.items()}, workdir, progress=False, log=lambda s: None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_train_what_one_process_trains(tmp_path):
    from helpers import subprocess_env

    port = _free_port()
    env = subprocess_env(XLA_FLAGS="")
    workers = [
        subprocess.Popen([sys.executable, __file__, str(i), "2", str(port), str(tmp_path / "two")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    one = tiny_run(tmp_path / "one")  # meanwhile, the single-process reference in this process
    outs = [w.communicate(timeout=240) for w in workers]
    for w, (out, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [r["process_count"] for r in reports] == [2, 2]
    assert [r["result_json_writes"] for r in reports] == [1, 0]  # only process 0 writes
    two = reports[0]["result"]
    assert reports[1]["result"]["history"] == two["history"]  # every process ran the same steps
    assert two["final_step"] == one.final_step == MAX_STEPS
    assert two["trained_tokens"] == one.trained_tokens
    for a, b in zip(two["history"], one.history):
        assert a["step"] == b["step"]
        for name in b["losses"]:
            assert abs(a["losses"][name] - b["losses"][name]) <= 1e-5 * abs(b["losses"][name])
    rows_two, rows_one = _rows(tmp_path / "two" / "metrics.jsonl"), _rows(tmp_path / "one" / "metrics.jsonl")
    assert [r["step"] for r in rows_two] == list(range(1, MAX_STEPS + 1))  # one row per step: written once
    for a, b in zip(rows_two, rows_one):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * b["loss"]
    assert json.loads((tmp_path / "two" / "result.json").read_text())["history"] == two["history"]
    assert len(list((tmp_path / "two" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def _worker(index: int, count: int, port: int, workdir: str) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=count, process_id=index)
    import dataclasses

    import mixjax.train.loop as loop

    writes = []
    write = loop.write_json_atomic
    loop.write_json_atomic = lambda path, payload: (writes.append(str(path)), write(path, payload))[1]
    result = tiny_run(workdir)
    report = {"process_count": jax.process_count(), "result_json_writes": len(writes), "result": dataclasses.asdict(result)}
    print(json.dumps(report))
    sys.stdout.flush()
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parents[1]))
    _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
