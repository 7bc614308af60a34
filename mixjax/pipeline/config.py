"""Experiment configuration: a Python file under configs/ that defines ``config``.

Overrides from the command line use dotted paths, e.g. ``--set train.max_steps=20
base_tokens=40000 validate.grid_step=0.1``; values are parsed as Python literals and then
validated against the field's type annotation with pydantic (lax mode: ``1e6`` for an
``int`` becomes 1000000, ``1.5`` or ``4O96`` is an error naming the key; a bool is never
taken for a number). A config file's own values are checked the same way when it is loaded
(:func:`load_config`, :func:`check_types`): one line naming the file, line, field, value and
the type expected. Every check that can fail runs before any training (:func:`validate`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib.util
import re
import traceback
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pydantic

from mixjax.cli import check_per_domain
from mixjax.data.domain import DomainSpec, TargetSpec
from mixjax.mixing.design import DESIGNS, SWARM_STRENGTHS, PAPER_SCALES
from mixjax.mixing.fit import FitConfig
from mixjax.mixing.objective import objective_importance
from mixjax.mixing.solve import Constraints
from mixjax.model.llama import PRESETS, ModelConfig, RopeScaling, cudnn_shape_error, flash_shape_error
from mixjax.train.loop import TrainConfig
from mixjax.train.optimizer import OptimizerConfig
from mixjax.train.sharding import batch_split_error


class ConfigError(ValueError):
    """A bad experiment config; raised before any training starts."""


@dataclasses.dataclass(frozen=True)
class ValidateConfig:
    budget: int | None = None  # tokens; default: the first target budget
    baselines: tuple[str, ...] = ("uniform", "proportional")
    grid_step: float | None = None  # train every simplex-lattice mixture at this step (slow)
    # Train every validation mixture at this many seeds (config seed, +1, ...): each seed selects
    # other examples in another order from the same base model; the report gives mean, sd and
    # paired t intervals of optimal - baseline over seeds.
    seeds: int = 1


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Pretrain the model once on a general synthetic corpus before the SFT runs (the demo's
    stand-in for a pretrained checkpoint). The result is a local Hugging Face model directory
    under ``<workdir>/base-models/<fingerprint>/``, reused while its fingerprint matches;
    every SFT run fine-tunes from it through the ``checkpoint=`` code path."""

    num_documents: int = 20_000
    val_documents: int = 256
    vocab_size: int = 512  # BPE vocabulary (the model's embedding rows follow it)
    train: TrainConfig = TrainConfig(epochs=1.0)
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    """Which runs the plan stage trains (:func:`mixjax.mixing.design.design_runs`).

    ``design``: "4k+1" (the paper's perturbation runs, ``ExperimentConfig.scales``),
    "swarm" (a Dirichlet swarm around the available tokens' shares at the base run's
    budget, RegMix's and olmix's procedure) or "4k+1+swarm". ``swarm_runs``: its size
    (None: 4k+1, the cost of the 4k+1 design); ``swarm_strengths``: the range of the
    Dirichlet strength; ``swarm_min_distance``: the half-L1 distance below which a draw is
    a near-duplicate. The draws come from ``ExperimentConfig.seed`` and are recorded in
    plan.json."""

    design: str = "4k+1"
    swarm_runs: int | None = None
    swarm_strengths: tuple[float, float] = SWARM_STRENGTHS
    swarm_min_distance: float = 0.05


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str
    domains: tuple[DomainSpec, ...]
    base_tokens: int  # n: tokens per domain in the base run
    target_budgets: tuple[int, ...]  # N: total SFT tokens to optimise the mixture for
    model: str | ModelConfig = "demo"  # a preset name or a ModelConfig
    checkpoint: str | None = None  # local HF model directory to fine-tune from
    tokenizer: str = "byte"  # "byte" or a local tokenizer.json / directory
    train: TrainConfig = TrainConfig()
    evals_per_run: int = 6
    scales: tuple[float, ...] = PAPER_SCALES
    plan: PlanConfig = PlanConfig()
    # Validation sets no run trains on, evaluated in every run; the objective may weigh them.
    targets: tuple[TargetSpec, ...] = ()
    # What the solve minimises: {domain or target: weight}; empty: every domain at its
    # ``importance`` (default 1), targets at 0 (mixjax.mixing.objective).
    objective: dict[str, float] = dataclasses.field(default_factory=dict)
    fit: FitConfig = FitConfig()  # the library's and mixjax.fit's defaults; fit.json records it
    importance: dict[str, float] = dataclasses.field(default_factory=dict)
    lower: dict[str, float] = dataclasses.field(default_factory=dict)
    upper: dict[str, float] = dataclasses.field(default_factory=dict)
    validate: ValidateConfig = ValidateConfig()
    workdir: str = "experiments"
    seed: int = 0
    pretrain: PretrainConfig | None = None  # None: fine-tune `checkpoint` (or train from scratch)
    # A finished run's checkpoints are deleted once its result.json is written (the full
    # state is ~90 GiB for 8B; nothing resumes a finished run); True keeps its best params.
    keep_best_params: bool = False
    # After the 4k+1 runs: rounds of k proposed runs each (mixjax.mixing.decision.propose_runs,
    # at the base run's budget), every round refitted before the next is proposed.
    adaptive_rounds: int = 0

    @property
    def experiment_dir(self) -> Path:
        return Path(self.workdir) / self.name

    @property
    def domain_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.domains)

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)

    def constraints(self, available) -> Constraints:
        """The solver's constraints: this config's bounds, ``available`` training tokens per
        domain (in domain order) and the objective's weights over the domains then the
        targets (``objective``, else ``importance`` with targets at 0)."""
        names = self.domain_names
        pick = lambda d, default: [d.get(n, default) for n in names]
        outputs = names + self.target_names
        if self.objective:
            importance = objective_importance(outputs, len(names), np.ones(len(outputs), bool), self.objective)
        else:
            importance = np.concatenate([pick(self.importance, 1.0), np.zeros(len(self.targets))])
        return Constraints.create(
            len(names), lower=pick(self.lower, 0.0), upper=pick(self.upper, 1.0), available=available, importance=importance,
        )

    def model_config(self) -> ModelConfig:
        if isinstance(self.model, ModelConfig):
            return self.model
        if self.model not in PRESETS:
            raise ConfigError(f"model: unknown preset {self.model!r} (have: {', '.join(PRESETS)})")
        return PRESETS[self.model]


# The config classes a config file builds, by name (an unknown keyword names their fields).
_SECTIONS = {c.__name__: c for c in (ExperimentConfig, ValidateConfig, PretrainConfig, TrainConfig, OptimizerConfig, ModelConfig, RopeScaling, FitConfig, DomainSpec)}


def load_config(path: str | Path) -> ExperimentConfig:
    """The ``config`` of a config file, every field checked against its annotation as
    ``--set`` checks it (:func:`check_types`; lax conversions such as ``"2e-5"`` for a
    float are applied).

    Raises:
      ConfigError: one line with the file (and line): a missing file, an error while the
        file runs (a misspelt field names the fields there are), no ``config``, a value
        of the wrong type.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"mixjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's file: any error there is theirs to fix, said in one line
        raise ConfigError(f"{_where_in(path, err)}: {_explain(err)}") from err
    config = getattr(module, "config", None)
    if not isinstance(config, ExperimentConfig):
        raise ConfigError(f"{path}: must define `config = ExperimentConfig(...)`")
    return check_types(config, path)


def _where_in(path: Path, err: BaseException) -> str:
    """``file:line`` of the innermost frame of ``err`` in the config file itself."""
    line = None
    if isinstance(err, SyntaxError) and err.lineno:
        line = err.lineno
    for frame in traceback.extract_tb(err.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    return f"{path}:{line}" if line else str(path)


_UNEXPECTED = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")


def _explain(err: BaseException) -> str:
    """The error in one line; an unknown keyword of a config class names its fields."""
    text = " ".join(str(err).split()) or type(err).__name__
    match = _UNEXPECTED.search(text)
    cls = _SECTIONS.get(match.group(1)) if match else None
    if cls is None:
        return f"{type(err).__name__}: {text}"
    names = sorted(f.name for f in dataclasses.fields(cls))
    close = difflib.get_close_matches(match.group(2), names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{cls.__name__} has no field {match.group(2)!r} ({hint}have: {', '.join(names)})"


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _accepts_bool(annotation: Any) -> bool:
    return annotation is bool or any(_accepts_bool(a) for a in typing.get_args(annotation)) or annotation is Any


def _typed(cls: type, field: str, value: Any, key: str, what: str = "override") -> Any:
    """``value`` checked (and safely converted) against the annotation of ``cls.field``;
    errors read ``<what> <key>=<value>: expected <type> (<why>)``."""
    annotation = _field_types(cls)[field]
    if isinstance(value, bool) and not _accepts_bool(annotation):
        raise ConfigError(f"{what} {key}={value!r}: expected {_type_name(annotation)}, got a bool")
    try:
        return pydantic.TypeAdapter(annotation).validate_python(value)
    except pydantic.ValidationError as err:
        problem = err.errors()[0]["msg"]
        raise ConfigError(f"{what} {key}={value!r}: expected {_type_name(annotation)} ({problem})") from None


def check_types(obj: Any, path: str | Path, prefix: str = "") -> Any:
    """``obj`` (a config dataclass) with every field checked against its annotation as
    ``--set`` checks it, at every level of nesting (sections, domains); converted values
    (``"2000"`` for an int) replace the given ones.

    Raises:
      ConfigError: ``<file>:<line>: <field>=<value>: expected <type> (<why>)``, the line
        being the first in the file that sets the field, where one does.
    """
    changes = {}
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            checked = check_types(value, path, key + ".")
        else:
            if isinstance(value, tuple) and any(dataclasses.is_dataclass(v) for v in value):
                value = tuple(check_types(v, path, f"{key}[{i}].") if dataclasses.is_dataclass(v) else v for i, v in enumerate(value))
            try:
                checked = _typed(type(obj), f.name, value, key, what="")
            except ConfigError as err:
                raise ConfigError(f"{_line_of(path, f.name)} {str(err).strip()}") from None
        if checked is not getattr(obj, f.name):
            changes[f.name] = checked
    return dataclasses.replace(obj, **changes) if changes else obj


def _line_of(path: str | Path, name: str) -> str:
    """``file:line`` of the first line of the config file that sets ``name=`` (else the file)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return f"{path}:"
    pattern = re.compile(rf"\b{re.escape(name)}\s*[=:]")
    line = next((i for i, text in enumerate(lines, start=1) if pattern.search(text)), None)
    return f"{path}:{line}:" if line else f"{path}:"


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _replace_path(obj: Any, keys: list[str], value: Any, key: str) -> Any:
    if not dataclasses.is_dataclass(obj):
        raise ConfigError(f"cannot set {key}: {type(obj).__name__} is not a config section")
    names = {f.name for f in dataclasses.fields(obj)}
    if keys[0] not in names:
        raise ConfigError(f"unknown config key {keys[0]!r} in {type(obj).__name__} (have: {', '.join(sorted(names))})")
    if len(keys) > 1:
        value = _replace_path(getattr(obj, keys[0]), keys[1:], value, key)
    else:
        value = _typed(type(obj), keys[0], value, key)
    return dataclasses.replace(obj, **{keys[0]: value})


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare string; the type check decides whether a string is fine here
        config = _replace_path(config, key.split("."), value, key)
    return config


def validate(config: ExperimentConfig, device_count: int | None = None, nodes: int | None = None) -> None:
    """Checks that need no data: names, budgets, paths, the batch's split over the mesh of
    ``device_count`` devices on ``nodes`` nodes (default: ``jax.device_count()`` and
    ``jax.process_count()``; given, no device is touched: ``mixjax.run --check-launch``), and
    every field's type (:func:`check_types`, for a config built in Python). Data-dependent
    checks (tokens available per domain) run in the plan stage, still before any training."""
    config = check_types(config, "<config>")
    names = config.domain_names
    if len(names) < 2:
        raise ConfigError(f"need at least 2 domains, have {list(names)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate domain names {list(names)}")
    for field in ("importance", "lower", "upper"):
        unknown = set(getattr(config, field)) - set(names)
        if unknown:
            raise ConfigError(f"{field}: unknown domain {sorted(unknown)[0]!r} (domains: {', '.join(names)})")
        try:
            check_per_domain(getattr(config, field), field)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    check_domain_specs(config.domains + config.targets)
    if set(config.target_names) & set(names):
        raise ConfigError(f"targets: {sorted(set(config.target_names) & set(names))[0]!r} is also a domain; a target is a validation set no run trains on: rename it")
    if config.objective:
        try:
            objective_importance(names + config.target_names, len(names), np.ones(len(names) + len(config.targets), bool), config.objective)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if config.base_tokens <= 0 or any(b <= 0 for b in config.target_budgets) or not config.target_budgets:
        raise ConfigError("base_tokens and target_budgets must be positive (and at least one target budget)")
    if config.checkpoint is not None and not (Path(config.checkpoint) / "config.json").exists():
        raise ConfigError(f"checkpoint: {config.checkpoint} is not a local Hugging Face model directory (no config.json)")
    if config.tokenizer != "byte" and not Path(config.tokenizer).exists():
        raise ConfigError(f"tokenizer: {config.tokenizer} does not exist")
    for domain in config.domains:
        for source in domain.sources:
            if not source.startswith(("synthetic:", "tfds:")) and not Path(source).exists():
                raise ConfigError(f"domain {domain.name}: source {source} does not exist")
    plan = config.plan
    if plan.design not in DESIGNS:
        raise ConfigError(f"plan.design: unknown design {plan.design!r} (have: {', '.join(DESIGNS)})")
    if plan.swarm_runs is not None and plan.swarm_runs < 1:
        raise ConfigError(f"plan.swarm_runs: a number of runs >= 1 (or None: 4k+1), got {plan.swarm_runs}")
    if not 0 <= plan.swarm_min_distance < 1:
        raise ConfigError(f"plan.swarm_min_distance: a half-L1 distance in [0, 1), got {plan.swarm_min_distance}")
    if not 0 < plan.swarm_strengths[0] <= plan.swarm_strengths[1]:
        raise ConfigError(f"plan.swarm_strengths: (low, high) with 0 < low <= high, got {plan.swarm_strengths}")
    if config.adaptive_rounds < 0:
        raise ConfigError(f"adaptive_rounds: a number of rounds >= 0, got {config.adaptive_rounds}")
    if config.validate.seeds < 1:
        raise ConfigError(f"validate.seeds: need at least 1 seed, got {config.validate.seeds}")
    unknown = set(config.validate.baselines) - {"uniform", "proportional"}
    if unknown:
        raise ConfigError(f"validate.baselines: unknown {sorted(unknown)} (have: uniform, proportional)")
    if config.pretrain is not None:
        if config.checkpoint is not None:
            raise ConfigError("set either pretrain (train a base model here) or checkpoint (fine-tune a given one), not both")
        p = config.pretrain
        if p.num_documents <= p.val_documents or p.val_documents <= 0 or p.vocab_size < 300:
            raise ConfigError("pretrain: need num_documents > val_documents > 0 and vocab_size >= 300")
    if config.train.max_steps is not None and config.train.max_steps <= 0:
        raise ConfigError(f"train.max_steps: a cap must be positive, got {config.train.max_steps}")
    check_attention(config)
    check_batch_split(config, device_count, nodes)


def check_domain_specs(domains: tuple[DomainSpec, ...]) -> None:
    """ConfigError for a domain that could not be measured or loaded: fewer than one
    validation example, a ``max_bad_fraction`` outside [0, 1], no sources."""
    for d in domains:
        if d.val_examples < 1:
            raise ConfigError(
                f"domains: {d.name}.val_examples={d.val_examples}: expected an int >= 1 (the fit needs every domain's"
                " validation loss; 128 is the default)"
            )
        if not 0.0 <= d.max_bad_fraction <= 1.0:
            raise ConfigError(f"domains: {d.name}.max_bad_fraction={d.max_bad_fraction!r}: expected a number in [0, 1]")
        if not d.sources:
            raise ConfigError(f"domains: {d.name}.sources is empty: expected at least one file, synthetic: or tfds: source")


def check_attention(config: ExperimentConfig) -> None:
    """ConfigError when ``model.attention_impl='flash'`` (:func:`flash_shape_error`) or
    ``'cudnn'`` (:func:`cudnn_shape_error`) cannot run the rows of a train section on
    CUDA; the default (None) falls back to XLA's."""
    model = config.model_config()
    sections = [("train", config.train)] + ([("pretrain.train", config.pretrain.train)] if config.pretrain else [])
    for key, train in sections:
        if model.attention_impl == "flash" and (error := flash_shape_error(train.seq_len, model.head_size)) is not None:
            raise ConfigError(
                f"model.attention_impl='flash' cannot run {key}.seq_len={train.seq_len} on GPU: {error};"
                f" set {key}.seq_len to a multiple of 128, or model.attention_impl=None (flash where it runs, else xla)"
            )
        if model.attention_impl == "cudnn" and (error := cudnn_shape_error(train.seq_len, model.head_size, model.dtype)) is not None:
            raise ConfigError(
                f"model.attention_impl='cudnn' cannot run {key}.seq_len={train.seq_len} with model.head_dim={model.head_size}"
                f" and model.dtype={model.dtype!r}: {error}; fix that, or set model.attention_impl=None (flash where it runs, else xla)"
            )


def check_batch_split(config: ExperimentConfig, device_count: int | None = None, nodes: int | None = None) -> None:
    """ConfigError when a global batch (train, pretrain) cannot be split over the mesh's
    data-parallel devices (``device_count`` on ``nodes`` nodes), naming the numbers and the fix."""
    if device_count is None:
        import jax

        device_count, nodes = jax.device_count(), jax.process_count() if nodes is None else nodes
    sections = [("train", config.train)] + ([("pretrain.train", config.pretrain.train)] if config.pretrain else [])
    for key, train in sections:
        error = batch_split_error(train.batch_size, train.mesh_shape, device_count, key, train.dcn_mesh_shape, nodes or 1)
        if error is not None:
            raise ConfigError(error)
