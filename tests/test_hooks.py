"""Unit tests of the training loop's hooks (mixjax.train.hooks) and of progress display
(mixjax.progress), each on fakes: no model, no compile."""

import io
import json
import math

import numpy as np
import pytest

from mixjax.progress import StepProgress, progress_iter
from mixjax.train import hooks as H
from mixjax.train.errors import NonFiniteLossError


class FakeMetricsOut:
    """Stands in for RunMetrics: records rows, evaluations and flushes."""

    def __init__(self):
        self.rows, self.evaluations, self.flushes = [], [], 0

    def step(self, step, row):
        self.rows.append({"step": step, **row})

    def evaluation(self, step, losses):
        self.evaluations.append((step, dict(losses)))

    def flush(self):
        self.flushes += 1


class FakeCheckpoints:
    def __init__(self):
        self.saves = []

    def save(self, step, state, meta, *, total, full):
        self.saves.append({"step": step, "total": total, "full": full, "meta": json.loads(json.dumps(meta))})


class FakeState:
    params = "params"


def info(step, record=None, *, total_steps=10, final=False, sync=False, metrics=None, tokens=0):
    return H.StepInfo("run", step, total_steps, FakeState(), record or H.RunRecord(), metrics, tokens, final, sync)


def device_metrics(loss, grad_norm=1.0, lr=0.1):
    return {"loss": np.float32(loss), "grad_norm": np.float32(grad_norm), "learning_rate": np.float32(lr), "tokens": np.float32(8)}


def test_run_hooks_every_final_and_sync():
    calls = []
    hooks = [
        H.Hook(lambda i: calls.append(("each", i.step, i.sync))),
        H.Hook(lambda i: calls.append(("third", i.step, i.sync)), every=3, sync=True),
        H.Hook(lambda i: calls.append(("fifth", i.step, i.sync)), every=5),
    ]
    for step in range(1, 8):
        H.run_hooks(hooks, info(step, final=step == 7))
    by_name = {name: [s for n, s, _ in calls if n == name] for name in ("each", "third", "fifth")}
    assert by_name == {"each": [1, 2, 3, 4, 5, 6, 7], "third": [3, 6, 7], "fifth": [5, 7]}
    # sync is set for every hook due at a step where a sync hook is due (and at the end)
    assert [s for n, s, sync in calls if n == "each" and sync] == [3, 6, 7]
    assert [(s, sync) for n, s, sync in calls if n == "fifth"] == [(5, False), (7, True)]
    # hooks run in the order given
    assert [n for n, s, _ in calls if s == 6] == ["each", "third"]


def test_run_record_best_and_meta_round_trip():
    record = H.RunRecord()
    assert record.add_evaluation(2, {"a": 1.0, "b": 2.0}) is True
    assert record.add_evaluation(4, {"a": 1.5, "b": 2.0}) is False
    assert record.add_evaluation(6, {"a": 0.5, "b": 2.0}) is True
    assert record.best == {"step": 6, "losses": {"a": 0.5, "b": 2.0}, "total": 2.5}
    assert record.total_at(6) == 2.5 and record.total_at(4) is None  # only the last evaluation's step
    record.trained_tokens = 1234
    again = H.RunRecord.from_meta(json.loads(json.dumps(record.to_meta())))  # as orbax's JsonSave stores it
    assert again == record
    fresh = H.RunRecord.from_meta(json.loads(json.dumps(H.RunRecord().to_meta())))
    assert fresh.best["total"] == math.inf and fresh.best["step"] == -1


def test_train_metrics_fetch_one_step_late_and_all_at_a_sync_step():
    out, times = FakeMetricsOut(), iter([0.0, 2.0, 3.0, 7.0])
    hook = H.TrainMetrics(out, flops_per_token=100.0, peak_flops=1000.0, clock=lambda: next(times))
    hook(info(1, metrics=device_metrics(2.5), tokens=40))
    assert out.rows == []  # step 1 is fetched when step 2 has been dispatched
    hook(info(2, metrics=device_metrics(2.0), tokens=30))
    assert [r["step"] for r in out.rows] == [1] and out.flushes == 0
    assert out.rows[0]["tokens_per_s"] == pytest.approx(40 / 2.0) and out.rows[0]["mfu"] == pytest.approx(20 * 100 / 1000)
    assert out.rows[0]["loss"] == pytest.approx(2.5) and out.rows[0]["learning_rate"] == pytest.approx(0.1)
    hook(info(3, metrics=device_metrics(1.5), tokens=20, sync=True))  # e.g. an evaluation is due
    assert [r["step"] for r in out.rows] == [1, 2, 3] and out.flushes == 1
    assert out.rows[2]["tokens_per_s"] == pytest.approx(20 / 4.0)
    hook(info(3, sync=True))  # after the loop: nothing pending, files flushed again
    assert len(out.rows) == 3 and out.flushes == 2


@pytest.mark.parametrize("loss, grad_norm, value", [(float("nan"), 1.0, "nan"), (2.0, float("inf"), "inf")])
def test_train_metrics_raise_on_non_finite_loss_or_gradient(loss, grad_norm, value):
    out = FakeMetricsOut()
    hook = H.TrainMetrics(out, flops_per_token=1.0, peak_flops=None)
    hook(info(1, metrics=device_metrics(2.0)))
    hook(info(2, metrics=device_metrics(loss, grad_norm)))
    with pytest.raises(NonFiniteLossError) as err:
        hook.settle()  # the loop settles before DataExhaustedError; a sync step does the same
    assert (err.value.run, err.value.step, err.value.what) == ("run", 2, "train") and value in str(err.value)
    assert [r["step"] for r in out.rows] == [1] and out.rows[0]["mfu"] is None  # no peak: no MFU


def test_evaluation_records_logs_and_raises_on_non_finite():
    out, lines, record = FakeMetricsOut(), [], H.RunRecord()
    results = iter([{"a": 1.0, "b": 2.0}, {"a": 1.2, "b": 2.0}, {"a": float("nan"), "b": 2.0}])
    hook = H.Evaluation(lambda params: next(results), out, lines.append)
    hook(info(3, record))
    hook(info(6, record))
    assert record.best["step"] == 3 and [h["step"] for h in record.history] == [3, 6]
    assert out.evaluations == [(3, {"a": 1.0, "b": 2.0}), (6, {"a": 1.2, "b": 2.0})]
    assert lines == ["[run] step 3/10 val total 3.0000 a=1.0000 b=2.0000 *best", "[run] step 6/10 val total 3.2000 a=1.2000 b=2.0000"]
    with pytest.raises(NonFiniteLossError) as err:
        hook(info(9, record))
    assert (err.value.step, err.value.what) == (9, "eval") and len(record.history) == 2


def _checkpoint_hooks(hook, totals, every=2):
    return [
        H.Hook(lambda i: i.record.add_evaluation(i.step, {"a": totals.get(i.step, 0.5)}), every=every, sync=True),
        H.Hook(hook.best, every=every, sync=True),
        H.Hook(hook.save, sync=True, when=hook.due),
    ]


def test_checkpointing_full_steps_and_params_only_bests():
    """checkpoint_every=4, evaluations at 2, 4, 6, 8 (improving at 2, 6 and 8, not 4), end at 9
    (improving). The best of step 2 is written before the full save of step 4; step 6's is
    superseded by step 8's before any write, and the full save of step 8 carries it; step
    9's best is written at the end; no full save at the end."""
    ckpt, record = FakeCheckpoints(), H.RunRecord()
    hook = H.Checkpointing(ckpt, data_state=lambda: {"position": len(record.history)}, every=4)
    hooks = _checkpoint_hooks(hook, {2: 3.0, 4: 3.5, 6: 2.5, 8: 1.0})
    for step in range(1, 10):
        H.run_hooks(hooks, info(step, record, total_steps=9, final=step == 9))
    saved = [(s["step"], s["full"], s["total"]) for s in ckpt.saves]
    assert saved == [(2, False, 3.0), (4, True, 3.5), (8, True, 1.0), (9, False, 0.5)]
    last = ckpt.saves[-1]["meta"]
    assert last["data_state"] == {"position": 5} and last["best"]["step"] == 9 and len(last["history"]) == 5
    assert ckpt.saves[0]["meta"]["best"] == {"step": 2, "losses": {"a": 3.0}, "total": 3.0}
    assert ckpt.saves[0]["meta"]["data_state"] == {"position": 1}  # as at step 2, not at the write (step 4)


@pytest.mark.parametrize("evaluations", [2, 10])
def test_checkpoint_writes_do_not_grow_with_evaluations(evaluations):
    """A 20-step run whose every evaluation improves writes ONE params-only step, with 2
    or with 10 evaluations, and no full state (no timer or step cadence due)."""
    ckpt, record = FakeCheckpoints(), H.RunRecord()
    hook = H.Checkpointing(ckpt, data_state=lambda: {}, interval_s=1800.0, clock=lambda: 0.0)
    every = 20 // evaluations
    hooks = _checkpoint_hooks(hook, {s: 100.0 - s for s in range(every, 21, every)}, every=every)
    for step in range(1, 21):
        H.run_hooks(hooks, info(step, record, total_steps=20, final=step == 20))
    assert len(record.history) == evaluations
    assert [(s["step"], s["full"]) for s in ckpt.saves] == [(20, False)]


def test_checkpointing_on_a_timer():
    """interval_s=10, one step per 4 s: full saves after steps 3 and 6 (12 s and 24 s since
    the last save), none at the end (step 7): there only the params of its evaluation."""
    now, ckpt, record = [0.0], FakeCheckpoints(), H.RunRecord()
    hook = H.Checkpointing(ckpt, data_state=lambda: {}, interval_s=10.0, clock=lambda: now[0])
    hooks = _checkpoint_hooks(hook, {}, every=100)
    for step in range(1, 8):
        now[0] = 4.0 * step
        H.run_hooks(hooks, info(step, record, total_steps=7, final=step == 7))
    assert [(s["step"], s["full"]) for s in ckpt.saves] == [(3, True), (6, True), (7, False)]


class FakeSignal:
    received = None


def test_preemption_saves_the_full_state_then_stops():
    ckpt, record, signal = FakeCheckpoints(), H.RunRecord(), FakeSignal()
    waits = []
    ckpt.wait = lambda: waits.append(len(ckpt.saves))
    hook = H.Checkpointing(ckpt, data_state=lambda: {}, preemption=signal)
    hooks = _checkpoint_hooks(hook, {2: 1.0})
    H.run_hooks(hooks, info(1, record))
    H.run_hooks(hooks, info(2, record))
    signal.received = "SIGUSR1"
    with pytest.raises(H.Preempted) as stop:
        H.run_hooks(hooks, info(3, record))
    assert [(s["step"], s["full"]) for s in ckpt.saves] == [(2, False), (3, True)] and waits == [2]
    assert isinstance(stop.value, SystemExit) and "SIGUSR1" in str(stop.value) and "step 3" in str(stop.value)


def test_preemption_signal_sets_a_flag_and_restores_the_handler():
    import os
    import signal

    from mixjax.train.preemption import PreemptionSignal

    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionSignal() as flag:
        assert flag.received is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.received == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_profile_traces_three_steps_after_the_start(monkeypatch, tmp_path):
    events = []
    monkeypatch.setattr(H.jax.profiler, "start_trace", lambda d: events.append(("start", d)))
    monkeypatch.setattr(H.jax.profiler, "stop_trace", lambda: events.append(("stop",)))
    hook = H.Profile(tmp_path / "profile", start=2)
    for step in range(1, 8):
        hook(info(step))
        events.append(step)
    assert events == [1, ("start", str(tmp_path / "profile")), 2, 3, 4, ("stop",), 5, 6, 7]
    unfinished = H.Profile(tmp_path, start=1)
    unfinished(info(1))
    unfinished.close()  # the loop's exit stops a trace that a failure interrupted
    unfinished.close()
    assert events[-2:] == [("start", str(tmp_path)), ("stop",)]


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_off_a_terminal_is_a_few_whole_lines():
    stream, now = io.StringIO(), [0.0]
    hook = H.Progress("run", 1000, initial=0, stream=stream, interval_s=30.0, clock=lambda: now[0])
    for step in range(1, 1001):
        now[0] = step * 0.5  # 500 s in all: one line per 30 s at most
        hook(info(step, total_steps=1000))
    hook.close()
    text = stream.getvalue()
    assert "\r" not in text and len(text.splitlines()) == 16  # floor(500 / 30)
    assert text.splitlines()[0] == "[run] step 60/1000 (6%)"


def test_progress_on_a_terminal_is_a_bar():
    stream = FakeTerminal()
    display = StepProgress("run", 10, initial=4, stream=stream)
    for step in range(5, 11):
        display.update(step)
    display.close()
    assert "\r" in stream.getvalue() and display.bar.n == 10


def test_progress_iter_writes_one_line_per_item_off_a_terminal():
    stream = io.StringIO()
    assert list(progress_iter(["a", "b", "c"], "runs", stream=stream)) == ["a", "b", "c"]
    assert stream.getvalue() == "runs: 1/3 done\nruns: 2/3 done\nruns: 3/3 done\n"
    quiet = io.StringIO()
    assert list(progress_iter(["a"], "runs", enabled=False, stream=quiet)) == ["a"] and quiet.getvalue() == ""
    bar = FakeTerminal()
    list(progress_iter(range(3), "runs", stream=bar))
    assert "\r" in bar.getvalue() and "3/3" in bar.getvalue()


def test_timer_and_signal_are_agreed_only_at_poll_steps():
    """With several processes the timer/signal decision is an all-gather (``agree``): asked
    every ``poll_every`` steps only; a step cadence needs no agreement."""
    asked, ckpt, record, signal = [], FakeCheckpoints(), H.RunRecord(), FakeSignal()
    hook = H.Checkpointing(ckpt, data_state=lambda: {}, every=7, preemption=signal, poll_every=5,
                           agree=lambda wanted: asked.append(wanted) or wanted)
    signal.received = None
    hooks = _checkpoint_hooks(hook, {}, every=100)
    for step in range(1, 8):
        H.run_hooks(hooks, info(step, record, total_steps=20))
    assert asked == [False] and [(s["step"], s["full"]) for s in ckpt.saves] == [(7, True)]


def test_the_selection_alone_picks_the_best_evaluation():
    """RunRecord(selection=domains): a target measured at every evaluation never chooses the
    checkpoint (it would be tuned on the set it is judged on)."""
    from mixjax.train.hooks import RunRecord

    for selection, best in ((("a", "b"), 2), (None, 1)):
        record = RunRecord(selection=selection)
        record.add_evaluation(1, {"a": 1.0, "b": 1.0, "target": 5.0})
        record.add_evaluation(2, {"a": 0.9, "b": 1.0, "target": 9.0})
        assert record.best["step"] == best
    assert record.total({"a": 1.0, "target": 2.0}) == 3.0 and RunRecord(selection=("a",)).total({"a": 1.0, "target": 2.0}) == 1.0
