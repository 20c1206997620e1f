"""Runs of ``dfkd-guard bench``: enumeration, execution, metrics, resumable storage.

A run is one DFKD training: (setting, adapter, teacher row, seed) under a
:class:`~dfkd_guard.bench.config.BenchConfig`. Its id is readable and stable:
``<setting id>-<adapter>-<row>-seed<seed>-<hash>``, the hash being the SHA-256 of
everything that determines the run (:func:`run_config`), so a changed budget,
adapter config, setting, trigger, NTL loss, architecture, teacher or guard gives
a new id while an unchanged run keeps its id across processes.

Each finished run is stored as ``<out>/runs/<run_id>.json`` (written to a
temporary file, then renamed over the target): its config, what it ran
(``components``: the setting with its parameters, trigger and target class, each
teacher's recipe, NTL loss and architecture, the student's architecture, every
parameter given), metric curves, final metrics and timing. :func:`run_bench`
skips every run whose file exists, so an interrupted benchmark resumes where it
stopped. Per teacher, the
teacher's own accuracy and the AUROC of each scorer on real ID vs real OOD
test images are stored once in ``<out>/teacher_metrics/<id>.json``.

Metrics (all on held-out real test images, rates in [0, 1]):

* ``iacc``: student accuracy on the ID (MNIST) test set;
* ``oacc``: student accuracy on the OOD test set, close-set settings only
  (for a backdoor setting: triggered images against their true labels);
* ``oagr``: share of OOD test images where the student predicts what the
  NTL teacher of the setting predicts;
* ``dagr``: the same share over the disagreement subset alone, the OOD test
  images on which the SL teacher and the setting's NTL teacher predict
  different classes: near 0 for a student that behaves like the SL teacher,
  near 1 for one that inherited the NTL teacher's behaviour (NaN where the
  subset is empty; the run record's ``disagreement_subset`` gives its size).
  The SL teacher is the one every setting shares; :func:`run_bench` trains
  (or loads) it also for a config without an SL row;
* ``asr``: share of triggered non-target test images the student sends to
  the target class; ``asr_minus_clean``: ``asr`` minus the share of the clean
  versions of the same images it sends there (backdoor settings only);
* trap diagnostics on the adapter's latest synthetic batch: ``ood_share`` (OOD
  side of a linear probe on the teacher's features fitted on real ID vs OOD
  train images), ``collapse`` (share of the teacher's predictions in the most
  frequent class) and ``flagged`` (share of student samples the guard forgot
  since the previous evaluation, from the guard's step reports);
* the same trap diagnostics on what the student distilled, :data:`POOL_SAMPLE`
  images evenly spaced over the adapter's pool (DeepInversion and CMI: every
  pooled round; vanilla with replay: the replay pool of the latest student
  images; vanilla without replay: the latest ``ceil(POOL_SAMPLE / batch_size)``
  synthetic batches), all of them where there are fewer:
  ``pool_ood_share`` on the OOD side of the probe fitted on the *SL* teacher's
  features (one probe for every row of a setting, so rows compare),
  ``pool_collapse`` (share of the run's teacher's predictions in the most
  frequent class: the labels the student learnt) and ``pool_images`` (how
  many images they measured).

A run's final value of each metric is the mean of its last 3 evaluations.

Each run record also has ``seconds_per_iteration_phases``: the median wall
time of an iteration (as ``seconds_per_iteration``, without evaluations)
during the guard's BN-prior warm-up (``warmup``: the iterations that began
before the verdict, the one that reached it included), after the verdict
(``after_verdict``) and over the whole run (``all``); ``warmup`` and
``after_verdict`` are None for a run without a BN prior (unguarded rows) and
where a phase has no iteration. ``workers`` is how many runs trained at once.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import hashlib
import json
import math
import multiprocessing
import signal
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from dfkd_guard import Guard, GuardConfig
from dfkd_guard.bn_statistics import batchnorm_layers
from dfkd_guard.errors import ConfigError
from dfkd_guard.hookspecs import hookimpl
from dfkd_guard.plugins import PluginRegistry
from dfkd_guard.serialization import write_json_atomic

from . import reporting
from .config import BenchConfig, row_label
from .data import Setting
from .metrics import OodProbe, auroc, collapse_rate, evenly_spaced, predict
from .models import BenchNet, Generator, build_network
from .oracle import OracleGuard, measure_bn_moments
from .settings import SETTINGS
from .teachers import DEFAULT_ARCHITECTURE, TeacherConfig, evaluate_teacher, load_or_train_teacher
from .threads import one_thread

__all__ = [
    "CODE_VERSION",
    "EARLIER_GUARD_VALUES",
    "FINAL_WINDOW",
    "POOL_SAMPLE",
    "BenchSummary",
    "EvalLabels",
    "RunSpec",
    "asr_minus_clean",
    "dfkd_seed",
    "enumerate_runs",
    "final_metrics",
    "prediction_metrics",
    "preflight",
    "row_guard",
    "run_bench",
    "run_components",
    "run_config",
    "run_file",
    "run_id",
    "run_path",
    "seconds_per_iteration_phases",
    "teacher_components",
    "teacher_config",
    "teacher_kind",
    "teacher_record_file",
    "teacher_record_id",
    "teacher_record_path",
    "training_groups",
]

#: Guard fields added after runs were first stored, each with the value the runs stored before ran with:
#: a run config leaves such a field out while it holds that value (:func:`guard_record`), and a stored
#: config without it is read with it (:func:`dfkd_guard.bench.records.stored_config`).
EARLIER_GUARD_VALUES: dict[tuple[str, str], Any] = {
    ("forget", "memory"): 0,
    ("trigger_window", "rows"): "carrying",
}
CODE_VERSION = "dfkd_guard.bench.runner/6"  # 5: DAgr, pool metrics, phase timing; 6: dfkd_seed
"""Part of every run id: bump it whenever the run code changes its results."""
#: Evaluations averaged into a run's final metrics (IAcc is the mean of the last 3).
FINAL_WINDOW = 3
#: Memory format of the teachers, students and generators of the runs: channels-last
#: convolutions (with the stored replay logits) took a vanilla iteration from 0.081 to
#: 0.052 s on CPU (``docs/design_decisions.md``, "Bench models are channels-last").
MEMORY_FORMAT = torch.channels_last
#: Images per :meth:`Guard.score` call when scoring real test images (fixed, so scores never depend on it).
_SCORE_CHUNK = 100
#: Most images the pool metrics measure, evenly spaced over the pool: one size, so pool collapse has one floor
#: (:func:`~dfkd_guard.bench.metrics.balanced_collapse_floor`: 0.115 for 1024 images over 10 classes).
POOL_SAMPLE = 1024


# -- what runs -------------------------------------------------------------------


def teacher_kind(config: BenchConfig, row: str, setting: str) -> str:
    """The teacher a row uses: ``sl``, or ``ntl`` (``ntl_backdoor`` in a setting with a trigger)."""
    if row.startswith("sl"):
        return "sl"
    return "ntl_backdoor" if config.setting(setting).trigger is not None else "ntl"


def ntl_kind(config: BenchConfig, setting: str) -> str:
    """The NTL teacher of a setting (the reference of OAgr)."""
    return teacher_kind(config, "ntl", setting)


@dataclass(frozen=True, order=True)
class RunSpec:
    """One cell of the table before seeds are averaged, for one seed (``setting``: the setting's id)."""

    setting: str
    adapter: str
    row: str
    seed: int

    @property
    def guarded(self) -> bool:
        return "_guard" in self.row

    def label(self) -> str:
        return f"{self.setting}/{self.adapter}/{row_label(self.row)}/seed {self.seed}"


def enumerate_runs(config: BenchConfig) -> list[RunSpec]:
    """Every run of ``config``, in table order: setting, adapter, row, seed.

    The ``ntl_oracle`` row runs only for the adapters in ``config.oracle_adapters``
    and the settings in ``config.oracle_settings``.
    """
    return [
        RunSpec(setting, adapter, row, seed)
        for setting in config.settings
        for adapter in config.adapters[setting]
        for row in config.rows
        if row != "ntl_oracle" or (adapter in config.oracle_adapters and setting in config.oracle_settings)
        for seed in config.seeds
    ]


def teacher_config(config: BenchConfig, setting: str, kind: str) -> TeacherConfig:
    """The :class:`TeacherConfig` of one teacher of the benchmark.

    An SL teacher is trained on the ID data alone, the same in every setting,
    so one SL teacher (named after the first built-in setting,
    :data:`~dfkd_guard.bench.settings.SETTINGS`, with the default NTL loss it
    does not use) serves every setting. An NTL teacher has the setting's NTL
    loss and its backdoor's target class (0 without a trigger).
    """
    sl = kind == "sl"
    return TeacherConfig(
        kind=kind,  # type: ignore[arg-type]
        setting=SETTINGS[0] if sl else setting,
        data_seed=config.data_seed,
        target_class=0 if sl else config.setting(setting).target_class or 0,
        steps=config.teacher_steps,
        batch_size=config.teacher_batch_size,
        lr=config.teacher_lr,
        shift=config.teacher_shift,
        seed=config.teacher_seed,
        ntl_loss=TeacherConfig().ntl_loss if sl else config.ntl_loss_of(setting),
        architecture=config.teacher_architecture,
        widths=config.teacher_widths,
        image_size=config.image_size,
    )


def teacher_components(config: BenchConfig, setting: str, kind: str) -> dict[str, Any]:
    """What a teacher is, with every parameter: recipe, NTL loss, backdoor target, architecture (JSON data).

    Components come with their summary and source (built-in, distribution, module).
    """
    teacher = teacher_config(config, setting, kind)
    return {
        "recipe": kind,
        "ntl_loss": teacher.resolved_loss().describe() if kind != "sl" else None,
        "target_class": teacher.target_class if kind == "ntl_backdoor" else None,
        "architecture": teacher.resolved_architecture().describe(),
        "widths": list(teacher.widths),
    }


def run_components(config: BenchConfig, spec: RunSpec) -> dict[str, Any]:
    """What a run ran, with every parameter: its setting, its teacher, the setting's NTL teacher, the student."""
    return {
        "setting": config.setting(spec.setting).describe(),
        "teacher": teacher_components(config, spec.setting, teacher_kind(config, spec.row, spec.setting)),
        "ntl_teacher": teacher_components(config, spec.setting, ntl_kind(config, spec.setting)),
        "student": {
            "architecture": config.component("student_architecture").describe(),
            "widths": list(config.student_widths),
        },
    }


def row_guard(config: BenchConfig, spec: RunSpec) -> GuardConfig:
    """The guard of a run: disabled, the config's guard, or the named variant of an ``..._guard@<variant>`` row,
    with the KD temperature of the run's adapter."""
    temperature = config.kd_temperature[spec.adapter]
    if not spec.guarded:
        return GuardConfig(
            enabled=False, normalization=config.guard.normalization, kd_temperature=temperature
        )
    guard = config.guard_variants[spec.row.split("@")[1]] if "@" in spec.row else config.guard
    return guard.model_copy(update={"kd_temperature": temperature})


def run_config(config: BenchConfig, spec: RunSpec) -> dict[str, Any]:
    """Everything that determines a run's result, as plain JSON data (hashed into its id).

    Its layout is version 0.3's where that version could say it: a setting that
    is the registered setting named like its id, with its defaults, is its id
    alone (else ``setting_spec`` holds it with every parameter), teachers are
    their :meth:`~dfkd_guard.bench.teachers.TeacherConfig.identity`, and the
    student's architecture is there only when it is not the default bench CNN.
    """
    adapter_config = getattr(config, spec.adapter)
    guard = row_guard(config, spec)
    kind = teacher_kind(config, spec.row, spec.setting)
    data = {
        "code_version": CODE_VERSION,
        "setting": spec.setting,
        "adapter": spec.adapter,
        "row": spec.row,
        "seed": spec.seed,
        "teacher": teacher_config(config, spec.setting, kind).identity(),
        "ntl_teacher": teacher_config(config, spec.setting, ntl_kind(config, spec.setting)).identity(),
        "guard": guard_record(guard, spec.guarded),
        "histogram_scorer": config.guard.scorer.model_dump(mode="json"),
        "adapter_config": adapter_config.model_dump(mode="json"),
        "budget": config.budgets[spec.adapter].model_dump(mode="json"),
        "student_lr": config.student_lr,
        "student_schedule": config.student_schedule,
        "student_widths": list(config.student_widths),
        "image_size": config.image_size,
        "latent_dim": config.latent_dim,
        "generator_width": config.generator_width,
        "probe_images": config.probe_images,
        "test_images": config.test_images,
    }
    setting = config.setting(spec.setting)
    if not setting.is_plain():
        data["setting_spec"] = setting.record()
    student = config.component("student_architecture")
    if not student.is_default(DEFAULT_ARCHITECTURE):
        data["student_architecture"] = student.record()
    return data


def guard_record(guard: GuardConfig, guarded: bool) -> dict[str, Any]:
    """The guard's part of a run config: the fields that can change the run's result.

    A disabled guard acts only through its normalization and its KD
    temperature (there only when it is not 1, as before it could be set), so
    the guard's other fields (and their defaults) stay out of an unguarded run's id.
    A field of :data:`EARLIER_GUARD_VALUES` stays out while it holds the value
    runs had before it existed, and the trap memory's ``recall`` while the
    memory is off, so such a guard hashes as it did then. Version 0.2.0
    removed ``bn_prior.estimate``, ``fixed_weight`` and ``drop_trapped`` from
    the guard config, so guarded runs stored by earlier versions have other
    ids and are trained again.
    """
    if not guarded:
        record = {"enabled": False, "normalization": guard.normalization.model_dump(mode="json")}
        if guard.kd_temperature != 1.0:
            record["kd_temperature"] = guard.kd_temperature
        return record
    record = guard.model_dump(mode="json")
    for (section, name), earlier in EARLIER_GUARD_VALUES.items():
        if record[section][name] == earlier:
            del record[section][name]
    if not guard.forget.memory:
        del record["forget"]["recall"]
    return record


def dfkd_seed(seed: int) -> int:
    """The torch seed of the DFKD runs of seed ``seed``: a hash of it.

    Teachers are seeded with their plain seed (``teacher_seed``, 0 by
    default). Seeded plainly too, the student of seed 0 (the teacher's
    architecture and widths by default) started from the very weights the
    teachers were initialised with, and its DeepInversion and CMI students
    reached 0.96-0.98 IAcc where those of seeds 1 and 2 stayed at 0.74-0.88.
    """
    return int.from_bytes(hashlib.sha256(f"dfkd run, seed {seed}".encode()).digest()[:7], "big")


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, allow_nan=False).encode()).hexdigest()


def run_id(config: BenchConfig, spec: RunSpec) -> str:
    """``<setting>-<adapter>-<row>-seed<seed>-<first 12 hex digits of the run config's hash>``."""
    return (
        f"{spec.setting}-{spec.adapter}-{spec.row}-seed{spec.seed}-{_digest(run_config(config, spec))[:12]}"
    )


def run_file(out: Path, run_id: str) -> Path:
    """Where the run record ``run_id`` is stored under the output folder ``out``."""
    return Path(out) / "runs" / f"{run_id}.json"


def run_path(config: BenchConfig, spec: RunSpec, out: Path | None = None) -> Path:
    """Where the finished run is stored."""
    return run_file(out or config.output_dir, run_id(config, spec))


def teacher_record_id(config: BenchConfig, setting: str, kind: str) -> str:
    """Id of a teacher's metrics record: kind, setting and a hash of what the record depends on."""
    data = {
        "code_version": CODE_VERSION,
        "teacher": teacher_config(config, setting, kind).identity(),
        "auroc_scorers": list(config.auroc_scorers),
        "auroc_images": config.auroc_images,
        "histogram_scorer": config.guard.scorer.model_dump(mode="json"),
        "normalization": config.guard.normalization.model_dump(mode="json"),
    }
    resolved = config.setting(setting)
    if not resolved.is_plain():
        data["setting_spec"] = resolved.record()
    return f"{kind}-{setting}-{_digest(data)[:12]}"


def teacher_record_file(out: Path, record_id: str) -> Path:
    """Where the teacher record ``record_id`` is stored under the output folder ``out``."""
    return Path(out) / "teacher_metrics" / f"{record_id}.json"


def teacher_record_path(config: BenchConfig, setting: str, kind: str, out: Path | None = None) -> Path:
    return teacher_record_file(out or config.output_dir, teacher_record_id(config, setting, kind))


# -- metrics on predictions --------------------------------------------------------


@dataclass(frozen=True)
class EvalLabels:
    """What the real-data metrics compare a student's predictions with.

    :param id_labels: (N,) true labels of the ID test images.
    :param ood_labels: (M,) labels of the OOD test images (digit labels in close-set settings).
    :param ntl_ood: (M,) the NTL teacher's predictions on the OOD test images.
    :param close_set: OOD labels share the ID label space (OAcc is defined).
    :param target_class: backdoor target class; None outside backdoor settings.
    :param sl_ood: (M,) the SL teacher's predictions on the OOD test images; None: no DAgr.
    """

    id_labels: torch.Tensor
    ood_labels: torch.Tensor
    ntl_ood: torch.Tensor
    close_set: bool
    target_class: int | None = None
    sl_ood: torch.Tensor | None = None

    @property
    def disagreement(self) -> torch.Tensor | None:
        """bool (M,): the OOD test images on which the SL and the NTL teacher predict different classes."""
        return None if self.sl_ood is None else self.sl_ood != self.ntl_ood


def asr_minus_clean(triggered: torch.Tensor, clean: torch.Tensor, target_class: int) -> tuple[float, float]:
    """Attack success rate and how much it exceeds the clean rate of the target class.

    :param triggered: (M,) predictions on triggered non-target digits.
    :param clean: (M,) predictions on the same digits without the trigger.
    :returns: ``(asr, asr - clean_rate)`` where ``asr`` is the share of
        ``triggered`` equal to ``target_class`` and ``clean_rate`` the share of ``clean``.
    """
    if triggered.shape != clean.shape or triggered.ndim != 1 or not len(triggered):
        raise ValueError(
            f"need two non-empty (M,) prediction tensors, got {tuple(triggered.shape)} and {tuple(clean.shape)}"
        )
    asr = float((triggered == target_class).float().mean())
    return asr, asr - float((clean == target_class).float().mean())


def prediction_metrics(
    pred_id: torch.Tensor, pred_ood: torch.Tensor, labels: EvalLabels, pred_clean: torch.Tensor | None = None
) -> dict[str, float]:
    """IAcc, OAcc (close-set), OAgr, DAgr (with ``labels.sl_ood``), and ASR / ASR minus clean rate (backdoor)
    from a student's predictions.

    :param pred_id: (N,) predictions on the ID test images.
    :param pred_ood: (M,) predictions on the OOD test images.
    :param pred_clean: (M,) predictions on the clean versions of the OOD images (backdoor settings only).
    :returns: rates in [0, 1] by name; ``dagr`` is NaN when the teachers never disagree.
    """
    metrics = {
        "iacc": float((pred_id == labels.id_labels).float().mean()),
        "oagr": float((pred_ood == labels.ntl_ood).float().mean()),
    }
    subset = labels.disagreement
    if subset is not None:
        agrees = pred_ood[subset] == labels.ntl_ood[subset]
        metrics["dagr"] = float(agrees.float().mean()) if len(agrees) else math.nan
    if labels.close_set:
        metrics["oacc"] = float((pred_ood == labels.ood_labels).float().mean())
    if labels.target_class is not None:
        if pred_clean is None:
            raise ValueError(
                "the backdoor metrics need the predictions on the clean versions of the OOD images"
            )
        metrics["asr"], metrics["asr_minus_clean"] = asr_minus_clean(
            pred_ood, pred_clean, labels.target_class
        )
    return metrics


def final_metrics(
    evaluations: list[dict[str, float | None]], window: int = FINAL_WINDOW
) -> dict[str, float | None]:
    """Per metric, the mean of its last ``window`` finite values (None when it has none)."""
    names = sorted({name for evaluation in evaluations for name in evaluation})
    final: dict[str, float | None] = {}
    for name in names:
        values = [v for e in evaluations if (v := e.get(name)) is not None and math.isfinite(v)][-window:]
        final[name] = sum(values) / len(values) if values else None
    return final


def seconds_per_iteration_phases(
    iteration_seconds: Sequence[float], verdicts: Sequence[str | None]
) -> dict[str, float | None]:
    """Median seconds per iteration before the guard's BN-prior verdict, after it, and over the run.

    :param iteration_seconds: wall time of each iteration, seconds, in order.
    :param verdicts: the BN prior's verdict after each iteration (``"warming up"``,
        ``"ordinary"``, ``"ntl-like"``), None for every iteration of a run without one.
    :returns: ``warmup``: over the iterations that began while the prior was
        warming up (so the one that reached the verdict counts); ``after_verdict``:
        over the others; ``all``: over every iteration. None where there is no
        iteration, and ``warmup`` and ``after_verdict`` None without a BN prior.
    """
    if len(iteration_seconds) != len(verdicts):
        raise ValueError(f"{len(iteration_seconds)} iteration times for {len(verdicts)} verdicts")

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    phases: dict[str, float | None] = {"warmup": None, "after_verdict": None}
    if verdicts and verdicts[0] is not None:
        began_warming_up = [True, *(verdict == "warming up" for verdict in verdicts[:-1])]
        phases["warmup"] = median([s for s, w in zip(iteration_seconds, began_warming_up) if w])
        phases["after_verdict"] = median([s for s, w in zip(iteration_seconds, began_warming_up) if not w])
    phases["all"] = median(list(iteration_seconds))
    return phases


# -- storage -----------------------------------------------------------------------


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


# -- execution ---------------------------------------------------------------------


class _StepRecorder:
    """Observer plugin: keeps each iteration's metrics the adapter reports to the guard, the guard's
    BN-prior verdict after it (once :meth:`watch` gave the guard) and, when given a window, the
    synthesizer's latest batches."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.verdicts: list[str | None] = []
        self.guard: Guard | None = None
        self.synthesizer: Any = None
        self.recent: deque[torch.Tensor] | None = None

    def watch(self, guard: Guard, synthesizer: Any, recent_batches: int = 0) -> None:
        """Record ``guard``'s verdict after every iteration and, if ``recent_batches``, keep that many of
        ``synthesizer``'s latest synthetic batches in :attr:`recent`."""
        self.guard, self.synthesizer = guard, synthesizer
        self.recent = deque(maxlen=recent_batches) if recent_batches else None

    @hookimpl
    def dfkd_guard_step_finished(self, step: int, metrics: Mapping[str, float]) -> None:
        self.steps.append(dict(metrics))
        prior = self.guard.bn_prior if self.guard is not None else None
        self.verdicts.append(prior.verdict if prior is not None else None)
        if self.recent is not None:
            last = self.synthesizer.last_synthesis
            if last is not None and len(last.images):
                self.recent.append(last.images)


@dataclass
class BenchSummary:
    """What :func:`run_bench` did: ids of the runs trained now and of those found finished."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def preflight(config: BenchConfig) -> None:
    """Check the bench components, the guard, its variants and every AUROC scorer before any training.

    A teacher architecture without BatchNorm is checked against what needs
    one: BN matching (an adapter's ``bn`` > 0, CMI), the oracle row, the
    ``bn_deviation`` scorer.

    :raises ConfigError: naming ``settings.<id>.<field>``, ``guard.<field>``,
        ``guard_variants.<name>.<field>``, ``auroc_scorers[i]`` or the field that needs BatchNorm.
    """
    config.check_components()
    components = PluginRegistry().component_map()
    guards = {
        "guard": config.guard,
        **{f"guard_variants.{name}": g for name, g in config.guard_variants.items()},
    }
    for where, guard in guards.items():
        try:
            guard.resolve(components)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc.field}", str(exc).split(": ", 1)[-1]) from exc
    for i, name in enumerate(config.auroc_scorers):
        if ("scorer", name) not in components:
            known = sorted(n for k, n in components if k == "scorer")
            raise ConfigError(
                f"auroc_scorers[{i}]", f"unknown scorer {name!r}; registered: {', '.join(known)}"
            )
    _check_batchnorm(config)


def _check_batchnorm(config: BenchConfig) -> None:
    network = config.component("teacher_architecture")
    with torch.random.fork_rng(devices=[]):  # building a network draws its weights
        teacher = build_network(network, config.teacher_widths, 10, config.image_size, "teacher_architecture")
    if batchnorm_layers(teacher):
        return
    why = f"teacher_architecture {network.name!r} has no BatchNorm layer"
    for spec in enumerate_runs(config):
        if spec.adapter == "cmi":
            raise ConfigError(
                f"adapters.{spec.setting}", f"{why}; cmi needs one (its features are BN statistics)"
            )
        if getattr(config, spec.adapter).bn > 0:
            raise ConfigError(f"{spec.adapter}.bn", f"{why}: BN matching needs one; set bn = 0")
        if spec.row == "ntl_oracle":
            raise ConfigError("rows", f"{why}: the ntl_oracle row replaces BN targets")
    scorers = [("guard.scorer.name", config.guard.scorer.name)]
    scorers += [(f"guard_variants.{n}.scorer.name", g.scorer.name) for n, g in config.guard_variants.items()]
    scorers += [(f"auroc_scorers[{i}]", name) for i, name in enumerate(config.auroc_scorers)]
    for where, name in scorers:
        if name == "bn_deviation":
            raise ConfigError(where, f"{why}; bn_deviation scores BN statistics")


class _Context:
    """Settings, teachers, probes and the teachers' test predictions, built once per process when first needed."""

    def __init__(self, config: BenchConfig, out: Path, say: Callable[[str], None], workers: int = 1) -> None:
        self.config = config
        self.out = out
        self.say = say
        #: Runs trained at once (worker processes), stored with each run.
        self.workers = workers
        self._settings: dict[str, Setting] = {}
        self._teachers: dict[str, BenchNet] = {}
        self._probes: dict[tuple[str, str], OodProbe] = {}
        self._oracles: dict[tuple[str, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._test: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, EvalLabels]] = {}

    def setting(self, name: str) -> Setting:
        if name not in self._settings:
            resolved = self.config.setting(name)
            self._settings[name] = resolved.build(self.config.data_seed, self.config.image_size)
        return self._settings[name]

    def teacher(self, setting: str, kind: str) -> BenchNet:
        teacher = teacher_config(self.config, setting, kind)
        key = teacher.model_dump_json()
        if key not in self._teachers:
            began = time.perf_counter()
            model = load_or_train_teacher(
                teacher, self.config.teacher_cache(self.out), data=self.setting(setting)
            )
            self._teachers[key] = model.to(memory_format=MEMORY_FORMAT)
            self.say(f"teacher {kind} on {setting} ready ({time.perf_counter() - began:.1f} s)")
        return self._teachers[key]

    def oracle_targets(self, setting: str, kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """BN moments measured on real ID train images (the oracle row; not data-free)."""
        key = (setting, kind)
        if key not in self._oracles:
            images = self.setting(setting).id_train.images[: self.config.probe_images]
            self._oracles[key] = measure_bn_moments(self.teacher(setting, kind), images)
        return self._oracles[key]

    def probe(self, setting: str, kind: str) -> OodProbe:
        key = (setting, kind)
        if key not in self._probes:
            data, n = self.setting(setting), self.config.probe_images
            self._probes[key] = OodProbe(
                self.teacher(setting, kind).features, data.id_train.images[:n], data.ood_train.images[:n]
            )
        return self._probes[key]

    def test_data(self, setting: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, EvalLabels]:
        """ID test images, OOD test images, clean versions of the OOD images (backdoor), labels."""
        if setting not in self._test:
            data, n = self.setting(setting), self.config.test_images
            id_images, id_labels = data.id_test.images[:n], data.id_test.labels[:n]
            ood_images, ood_labels = data.ood_test.images[:n], data.ood_test.labels[:n]
            clean = data.clean_ood_test[:n] if data.clean_ood_test is not None else None
            ntl = predict(self.teacher(setting, ntl_kind(self.config, setting)), ood_images)
            sl = predict(self.teacher(setting, "sl"), ood_images)
            labels = EvalLabels(id_labels, ood_labels, ntl, data.close_set, data.target_class, sl)
            self._test[setting] = (id_images, ood_images, clean, labels)
        return self._test[setting]


def _scores(guard: Guard, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([guard.score(images[i : i + _SCORE_CHUNK]) for i in range(0, len(images), _SCORE_CHUNK)])


def _teacher_record(ctx: _Context, setting: str, kind: str) -> dict[str, Any]:
    """Accuracy of the teacher and the AUROC of every scorer on real ID vs OOD test images."""
    config = ctx.config
    teacher, data = ctx.teacher(setting, kind), ctx.setting(setting)
    n = config.auroc_images
    id_images, ood_images = data.id_test.images[:n], data.ood_test.images[:n]
    record: dict[str, Any] = {
        "record_id": teacher_record_id(config, setting, kind),
        "setting": setting,
        "kind": kind,
        "teacher_config": teacher_config(config, setting, kind).model_dump(mode="json"),
        "components": {
            "setting": config.setting(setting).describe(),
            "teacher": teacher_components(config, setting, kind),
        },
        "accuracy": evaluate_teacher(teacher, data),
        "auroc": {},
    }
    normalization = config.guard.normalization
    for name in config.auroc_scorers:
        with Guard(GuardConfig(scorer=name, normalization=normalization), teacher) as guard:
            record["auroc"][name] = auroc(_scores(guard, id_images), _scores(guard, ood_images))
    with Guard(config.guard.model_copy(update={"enabled": True}), teacher) as histogram_guard:
        record["guard_scores"] = {
            "scorer": config.guard.scorer.name,
            "real_id": _scores(histogram_guard, id_images).tolist(),
            "real_ood": _scores(histogram_guard, ood_images).tolist(),
        }
    return record


def _synthesizer(ctx: _Context, spec: RunSpec, teacher: BenchNet, student: BenchNet, guard: Guard) -> Any:
    from dfkd_guard.adapters.cmi import CMISynthesizer
    from dfkd_guard.adapters.deepinversion import DeepInversionSynthesizer
    from dfkd_guard.adapters.vanilla import VanillaSynthesizer

    c = ctx.config
    shape = (3, c.image_size, c.image_size)

    def generator() -> Generator:  # built here, after the student: the seeded draws stay in this order
        return Generator(c.latent_dim, c.generator_width, img_size=c.image_size).to(
            memory_format=MEMORY_FORMAT
        )

    if spec.adapter == "vanilla":
        return VanillaSynthesizer(
            teacher, student, generator(), c.latent_dim, guard, c.vanilla, image_shape=shape
        )
    if spec.adapter == "deepinversion":
        return DeepInversionSynthesizer(teacher, student, guard, c.deepinversion, image_shape=shape)
    if spec.adapter == "cmi":
        return CMISynthesizer(teacher, student, generator(), c.latent_dim, guard, c.cmi, image_shape=shape)
    raise ValueError(f"unknown adapter {spec.adapter!r}")


def training_groups(config: BenchConfig) -> list[list[RunSpec]]:
    """The runs of ``config`` grouped by the DFKD training they share, in table order.

    An SL teacher is trained on the ID data alone, so it, and every student
    distilled from it, is the same in every setting: the runs of an SL row
    with the same adapter and seed share one training, evaluated on each
    setting's test sets. A row and its guarded twin with the default guard
    (SL and SL + guard, NTL and NTL + guard; not a guard variant) of an
    adapter, seed and setting are one group too: trained once with the
    guard, and again without it only if the guard intervened
    (:attr:`~dfkd_guard.Guard.intervened`, see :func:`_train_group`). Every
    other run is a group of its own.
    """
    groups: dict[tuple[Any, ...], list[RunSpec]] = {}
    for spec in enumerate_runs(config):
        row = spec.row.removesuffix("_guard")  # a variant's row (``..._guard@<variant>``) keeps its name
        if teacher_kind(config, spec.row, spec.setting) == "sl":
            key: tuple[Any, ...] = (spec.adapter, row, spec.seed)
        else:
            key = (spec.setting, spec.adapter, row, spec.seed)
        groups.setdefault(key, []).append(spec)
    return list(groups.values())


Trained = list[tuple[RunSpec, dict[str, Any]]]


def _execute(ctx: _Context, group: list[RunSpec], stream: TextIO | None) -> tuple[Trained, list[RunSpec]]:
    """:func:`_train_group` on one torch thread (:func:`~dfkd_guard.bench.threads.one_thread`: a run's
    result must not depend on where it ran)."""
    with one_thread():
        return _train_group(ctx, group, stream)


def _train_group(ctx: _Context, group: list[RunSpec], stream: TextIO | None) -> tuple[Trained, list[RunSpec]]:
    """Train the runs of one group (see :func:`training_groups`) once: a record (not yet written) for each run
    that training made, and the runs left to train as a group of their own.

    A group of guarded and unguarded runs trains once with the guard. If the
    guard never intervened, every call it answered returned what a disabled
    guard returns, so that training is the unguarded one too (bit for bit:
    ``tests/bench/test_bench.py`` checks it), and the unguarded runs'
    records are made from it, naming the guarded run in
    ``same_training_as``; otherwise the unguarded runs are left to train
    again, without the guard (the caller schedules them like any group).
    """
    guarded = [spec for spec in group if spec.guarded]
    unguarded = [spec for spec in group if not spec.guarded]
    if not guarded or not unguarded:
        return list(zip(group, _train_runs(ctx, group, stream)[0])), []
    trained, intervened = _train_runs(ctx, guarded, stream, copies=unguarded)
    if intervened:
        return list(zip(guarded, trained)), unguarded
    return list(zip([*guarded, *unguarded], trained)), []


def _train_runs(
    ctx: _Context, group: list[RunSpec], stream: TextIO | None, copies: Sequence[RunSpec] = ()
) -> tuple[list[dict[str, Any]], bool]:
    """Train the runs of ``group`` once: their records, then those of ``copies`` (unguarded runs of a guarded
    group) from the same training, and whether the guard intervened (then the copies are not to be used)."""
    from dfkd_guard.adapters.training import train

    config = ctx.config
    first = group[0]
    kind = teacher_kind(config, first.row, first.setting)
    teacher = ctx.teacher(first.setting, kind)
    probes = {spec.setting: ctx.probe(spec.setting, kind) for spec in group}
    sl_probes = {spec.setting: ctx.probe(spec.setting, "sl") for spec in group}  # one per setting, every row
    tests = {spec.setting: ctx.test_data(spec.setting) for spec in group}
    began = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(dfkd_seed(first.seed))
        network = config.component("student_architecture")
        student = build_network(
            network, config.student_widths, teacher.num_classes, config.image_size, "student_architecture"
        ).to(memory_format=MEMORY_FORMAT)
        recorder = _StepRecorder()
        if first.row == "ntl_oracle":
            if getattr(getattr(config, first.adapter), "bn", 0) <= 0:
                raise ConfigError(
                    f"{first.adapter}.bn", "the oracle row replaces BN targets; it needs a BN weight > 0"
                )
            moments = ctx.oracle_targets(first.setting, kind)
            guard: Guard = OracleGuard(moments, row_guard(config, first), teacher, plugins=[recorder])
        else:
            guard = Guard(row_guard(config, first), teacher, plugins=[recorder])
        synthesizer = _synthesizer(ctx, first, teacher, student, guard)
        unpooled = first.adapter == "vanilla" and not config.vanilla.replay  # its pool stays empty
        window = math.ceil(POOL_SAMPLE / config.vanilla.batch_size) if unpooled else 0
        recorder.watch(guard, synthesizer, recent_batches=window)
        seen = {"steps": 0}
        no_images = torch.empty(0, 3, config.image_size, config.image_size)

        def latest_images() -> torch.Tensor:
            last = synthesizer.last_synthesis
            return last.images if last is not None else no_images

        def distilled_images() -> torch.Tensor:
            """Up to POOL_SAMPLE finite images, evenly spaced over the pool or the recent batches."""
            if recorder.recent is not None:
                pooled = torch.cat(list(recorder.recent)) if recorder.recent else no_images
            else:
                pooled = synthesizer.pool.images if synthesizer.pool.images is not None else no_images
            return evenly_spaced(pooled[torch.isfinite(pooled).flatten(1).all(dim=1)], POOL_SAMPLE)

        def evaluate() -> dict[str, float]:
            recent = recorder.steps[seen["steps"] :]
            seen["steps"] = len(recorder.steps)
            images, distilled = latest_images(), distilled_images()

            def collapse(batch: torch.Tensor) -> float:
                return collapse_rate(predict(teacher, batch), teacher.num_classes) if len(batch) else math.nan

            shared = {
                "flagged": sum(s.get("guard/forgotten", 0.0) for s in recent) / max(len(recent), 1),
                "collapse": collapse(images),
                "pool_collapse": collapse(distilled),
                "pool_images": float(len(distilled)),
            }
            metrics: dict[str, float] = {}
            for setting, (id_images, ood_images, clean_images, labels) in tests.items():
                own = prediction_metrics(
                    predict(student, id_images),
                    predict(student, ood_images),
                    labels,
                    predict(student, clean_images) if clean_images is not None else None,
                )
                own["ood_share"] = probes[setting].ood_share(images) if len(images) else math.nan
                own["pool_ood_share"] = (
                    sl_probes[setting].ood_share(distilled) if len(distilled) else math.nan
                )
                metrics.update({f"{setting}/{k}": v for k, v in {**own, **shared}.items()})
            return metrics

        budget = config.budgets[first.adapter]
        optimizer = torch.optim.Adam(student.parameters(), lr=config.student_lr)
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, budget.iterations)
            if config.student_schedule == "cosine"
            else None
        )
        label = (
            first.label() if len(group) == 1 else f"{first.adapter}/{row_label(first.row)}/seed {first.seed}"
        )
        try:
            result = train(
                synthesizer,
                optimizer,
                budget.iterations,
                kd_steps=budget.kd_steps,
                scheduler=scheduler,
                evaluate=evaluate,
                evaluate_every=budget.eval_every,
                progress=stream if stream is not None else False,
                log_every=max(budget.iterations // 10, 1),
                label=label,
            )
        finally:
            synthesizer.close()
            guard.close()
        images = latest_images()
        with Guard(config.guard.model_copy(update={"enabled": True}), teacher) as histogram_guard:
            synthetic_scores = _scores(histogram_guard, images).tolist() if len(images) else []
    wall = time.perf_counter() - began
    phases = seconds_per_iteration_phases(result.iteration_seconds, recorder.verdicts)
    lead = run_id(config, first)
    records = []
    for spec in [*group, *copies]:
        copy = not spec.guarded and first.guarded
        prefix = f"{spec.setting}/"
        evaluations = [
            {k[len(prefix) :]: _finite_or_none(v) for k, v in metrics.items() if k.startswith(prefix)}
            for _, metrics in result.evaluations
        ]
        curves: dict[str, list[float | None]] = {"iteration": [float(i) for i, _ in result.evaluations]}
        for name in sorted({k for e in evaluations for k in e}):
            curves[name] = [e.get(name) for e in evaluations]
        records.append(
            {
                "run_id": run_id(config, spec),
                "spec": {
                    "setting": spec.setting,
                    "adapter": spec.adapter,
                    "row": spec.row,
                    "seed": spec.seed,
                },
                "teacher_kind": kind,
                "guarded": spec.guarded,
                "config": run_config(config, spec),
                "components": run_components(config, spec),
                "shared_training": [other.setting for other in group] if len(group) > 1 else None,
                "curves": curves,
                "final": final_metrics(evaluations),
                "seconds_per_iteration": _finite_or_none(result.seconds_per_iteration),
                "seconds_per_iteration_phases": (
                    {**phases, "warmup": None, "after_verdict": None} if copy else phases
                ),
                "same_training_as": lead if copy else None,
                "workers": ctx.workers,
                "skipped_synthesis": result.skipped,
                "bn_prior": (
                    {
                        "verdict": guard.bn_prior.verdict,
                        "separation": guard.bn_prior.separation,
                        "weights": guard.bn_prior.weights,
                    }
                    if guard.bn_prior is not None and not copy
                    else None
                ),
                "trigger_window": None if copy else _trigger_record(guard),
                "probe_train_accuracy": probes[spec.setting].train_accuracy,
                "disagreement_subset": _disagreement_subset(tests[spec.setting][3]),
                "synthetic_scores": {"scorer": config.guard.scorer.name, "values": synthetic_scores},
                "wall_seconds": wall,
                "machine": reporting.machine_line(),
                "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
        )
    return records, guard.intervened


def _trigger_record(guard: Guard) -> dict[str, Any] | None:
    """The trigger search's best window and whether it counted as a trigger; None if it never searched."""
    search = guard.trigger_search
    if search is None or search.best is None:
        return None
    return {**dataclasses.asdict(search.best), "found": search.found is not None}


def _disagreement_subset(labels: EvalLabels) -> dict[str, int] | None:
    """DAgr's subset size: ``images`` of the ``of`` OOD test images; None without SL predictions."""
    subset = labels.disagreement
    return None if subset is None else {"images": int(subset.sum()), "of": len(subset)}


def run_bench(
    config: BenchConfig,
    out: Path | None = None,
    *,
    progress: bool = True,
    train_progress: bool = False,
    workers: int = 1,
) -> BenchSummary:
    """Run every run of ``config`` not already stored under ``out`` (default ``config.output_dir``).

    Teacher records (accuracy, scorer AUROCs) are computed for every teacher
    the runs use and stored once. Finished runs are never retrained.

    :param progress: one line per run (and per teacher) on standard error.
    :param train_progress: also each run's training progress lines (labelled with the run).
    :param workers: runs trained at once, each in its own process (teachers
        are trained first, in this process). A run's result does not depend on
        the number of workers: each run seeds itself, and every run and teacher
        trains on one torch thread.
    :returns: the ids of the runs trained now and of the runs skipped.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out or config.output_dir)
    preflight(config)

    def say(message: str) -> None:
        if progress:
            reporting.progress("bench", message)

    began = time.perf_counter()
    ctx = _Context(config, out, say)
    summary = BenchSummary()
    teachers = sorted({(s.setting, teacher_kind(config, s.row, s.setting)) for s in enumerate_runs(config)})
    teachers += sorted({(s, ntl_kind(config, s)) for s in config.settings} - set(teachers))
    for setting, kind in teachers:
        path = teacher_record_path(config, setting, kind, out)
        if not path.exists():
            write_json_atomic(_teacher_record(ctx, setting, kind), path)
            say(f"teacher record {path.name} written")
    specs = enumerate_runs(config)
    number = {spec: i for i, spec in enumerate(specs, start=1)}
    pending: list[list[RunSpec]] = []
    for group in training_groups(config):
        missing = []
        for spec in group:
            path = run_path(config, spec, out)
            if path.exists():
                summary.skipped.append(path.stem)
                say(f"[{number[spec]}/{len(specs)}] {spec.label()}: finished before, skipped")
            else:
                missing.append(spec)
        if missing:
            pending.append(missing)
    for setting in sorted({spec.setting for group in pending for spec in group}):
        ctx.teacher(
            setting, "sl"
        )  # every run's DAgr and pool OOD share need it: trained here, before any worker

    def finish(trained: Trained) -> None:
        for spec, record in trained:
            path = run_path(config, spec, out)
            write_json_atomic(record, path)
            summary.ran.append(path.stem)
            iacc = record["final"].get("iacc")
            say(
                f"[{number[spec]}/{len(specs)}] {spec.label()}: IAcc {iacc if iacc is None else f'{iacc:.3f}'}, "
                f"{record['wall_seconds']:.1f} s"
            )

    queue = deque(pending)  # in table order; a group's runs left to retrain go first
    if workers == 1 or len(pending) <= 1:
        stream = sys.stderr if train_progress else None
        while queue:
            trained, left = _execute(ctx, queue.popleft(), stream)
            finish(trained)
            if left:
                queue.appendleft(left)
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process that already runs torch threads
        settings = (config.model_dump(mode="json"), str(out), train_progress, min(workers, len(pending)))
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=settings
        ) as pool:
            running: set[Future[tuple[Trained, list[RunSpec]]]] = set()
            while queue or running:
                while queue and len(running) < workers:  # no more than the workers take: a retrain goes next
                    running.add(pool.submit(_execute_in_worker, queue.popleft()))
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    trained, left = future.result()
                    finish(trained)
                    if left:
                        queue.appendleft(left)
    summary.seconds = time.perf_counter() - began
    return summary


_PR_SET_PDEATHSIG = 1  # prctl(2)
_WORKER: dict[str, Any] = {}


def die_with_parent() -> None:
    """On Linux, have this process get SIGTERM when the process that started it dies, however it dies.

    A worker whose bench process was killed would otherwise go on training, unseen, on the same cores
    (it cannot store its run: the bench process writes the records).
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _start_worker(config: dict[str, Any], out: str, train_progress: bool, workers: int) -> None:
    die_with_parent()
    torch.set_num_threads(1)
    _WORKER["context"] = _Context(BenchConfig.from_mapping(config), Path(out), lambda message: None, workers)
    _WORKER["stream"] = sys.stderr if train_progress else None


def _execute_in_worker(group: list[RunSpec]) -> tuple[Trained, list[RunSpec]]:
    return _execute(_WORKER["context"], group, _WORKER["stream"])
