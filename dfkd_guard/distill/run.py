"""Run a :class:`~dfkd_guard.distill.config.DistillConfig`: build, train with checkpoints, write the run folder.

The run folder (``config.output``) holds:

* ``checkpoint.ckpt``: the resumable state (:func:`dfkd_guard.adapters.training.train`);
  running the same config again resumes it, a changed config is refused;
* ``metrics.jsonl``: one line per iteration (:class:`~dfkd_guard.distill.run_log.RunLog`);
* ``student.pt``: the final student's state dict (``torch.load(..., weights_only=True)``);
* ``summary.json`` and ``report.md``: the result, the guard's verdict, accuracy
  on the evaluation data if any, seconds per iteration and the machine.
"""

from __future__ import annotations

import json
import math
import platform
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from dfkd_guard import Guard, __version__
from dfkd_guard.adapters.base import Synthesizer
from dfkd_guard.adapters.checkpoint import load_checkpoint
from dfkd_guard.adapters.cmi import CMIConfig, CMISynthesizer
from dfkd_guard.adapters.deepinversion import DeepInversionConfig, DeepInversionSynthesizer
from dfkd_guard.adapters.training import TrainResult, train
from dfkd_guard.adapters.vanilla import VanillaConfig, VanillaSynthesizer
from dfkd_guard.distill.config import DistillConfig, EvaluationSpec
from dfkd_guard.distill.models import ModelSpec, build_model
from dfkd_guard.distill.parallel import digest, gathered, joined
from dfkd_guard.distill.run_log import RunLog
from dfkd_guard.errors import ConfigError
from dfkd_guard.imports import import_named
from dfkd_guard.processes import Processes
from dfkd_guard.serialization import save_weights_atomic, write_json_atomic

__all__ = ["DistillResult", "distill", "load_evaluation"]

_DEFAULT_GENERATOR = "dfkd_guard.adapters.generator:Generator"


@dataclass
class DistillResult:
    """What :func:`distill` produced: the folder, the trained student, the summary (written by the first process)."""

    output: Path
    student: nn.Module
    summary: dict[str, Any]
    train: TrainResult
    processes: Processes


def distill(
    config: DistillConfig,
    base_dir: Path,
    *,
    output: Path | None = None,
    extend: bool = False,
    progress: TextIO | bool = True,
) -> DistillResult:
    """Distil ``config.teacher`` into ``config.student`` with ``config.method``, resuming the run folder if any.

    :param base_dir: the config file's folder: model modules and weights / data paths are found there.
    :param output: the run folder (default: ``config.output``, relative to the working directory).
    :param extend: continue a checkpoint written with fewer ``iterations`` (:func:`train`).
    :param progress: progress lines to standard error (True), a stream, or False.
    :raises ConfigError: a model, dataset or method setting does not work out, naming the field.
    :raises CheckpointError: a weights file or the run's checkpoint is unusable, naming the file.
    """
    output = output if output is not None else Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    with joined(config.torch_device()) as (processes, device):
        return _distill(config, base_dir, output, extend, progress, processes, device)


def _distill(
    config: DistillConfig,
    base_dir: Path,
    output: Path,
    extend: bool,
    progress: TextIO | bool,
    processes: Processes,
    device: torch.device,
) -> DistillResult:
    """:func:`distill` inside the process group."""
    checkpoint = output / "checkpoint.ckpt"
    _check_divisible(config, processes)
    _seed(config.seed)  # the same on every process: each draws whole batches and keeps its rows
    teacher = build_model(config.teacher, "teacher", base_dir).to(device).eval()
    student = build_model(config.student, "student", base_dir).to(device)
    evaluation = None
    if config.evaluation is not None and processes.first:
        evaluation = load_evaluation(config.evaluation, base_dir)
    resumed_at = int(load_checkpoint(checkpoint)["iteration"]) if checkpoint.exists() else 0
    log = RunLog(output / "metrics.jsonl", resumed_at=resumed_at) if processes.first else None
    guard = Guard(config.guard_config(), teacher, plugins=[log] if log is not None else [])
    if log is not None:
        log.watch(guard)
    synthesizer = _synthesizer(config, teacher, student, guard, base_dir, device, processes)
    optimizer, scheduler = config.optimizer.build(student.parameters(), config.iterations)
    evaluate = None
    if evaluation is not None:
        images, labels = evaluation

        def evaluate() -> dict[str, float]:
            return {"student_accuracy": _accuracy(student, images, labels, config, device)}

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16")
    try:
        with autocast:
            result = train(
                synthesizer,
                optimizer,
                config.iterations,
                kd_steps=config.kd_steps,
                scheduler=scheduler,
                checkpoint_path=checkpoint,
                checkpoint_every=config.checkpoint_every,
                evaluate=evaluate,
                evaluate_every=config.evaluation.every if config.evaluation is not None else 0,
                progress=progress if processes.first else False,
                log_every=config.log_every,
                extend=extend,
                write_checkpoints=processes.first,
                run_settings={"precision": config.precision},
            )
    finally:
        synthesizer.close()
        guard.close()
        if log is not None:
            log.close()
    summary = _summary(config, result, guard, device)
    summary["processes"] = processes.world
    summary["students_identical"] = len(set(gathered(digest(student), processes))) == 1
    summary["verdicts"] = gathered(summary["guard"], processes)
    if processes.first:
        save_weights_atomic(student.state_dict(), output / "student.pt")
        if evaluation is not None:
            summary["teacher_accuracy"] = _accuracy(teacher, *evaluation, config, device)
        write_json_atomic(summary, output / "summary.json")
        (output / "report.md").write_text(_report(summary), encoding="utf-8")
    return DistillResult(output, student, summary, result, processes)


def _check_divisible(config: DistillConfig, processes: Processes) -> None:
    """Each process trains an equal share of every student batch."""
    adapter = config.adapter_config()
    field = "batch_size" if isinstance(adapter, VanillaConfig) else "student_batch_size"
    size = getattr(adapter, field)
    if size % processes.world:
        raise ConfigError(
            f"adapter.{field}",
            f"{size} images per student step do not split over {processes.world} processes",
        )


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _generator_spec(config: DistillConfig) -> ModelSpec:
    """The generator spec, with the built-in generator's sizes filled in from the config."""
    spec = config.generator
    if spec.model != _DEFAULT_GENERATOR:
        return spec
    channels, height, width = config.images.shape
    if height != width or height % 4:
        raise ConfigError(
            "generator.model",
            f"the built-in generator makes square images with a side divisible by 4, not {height}x{width}; "
            "name a generator of your own",
        )
    sizes = {"latent_dim": config.latent_dim, "out_channels": channels, "img_size": height}
    return spec.model_copy(update={"kwargs": {**sizes, **spec.kwargs}})


def _synthesizer(
    config: DistillConfig,
    teacher: nn.Module,
    student: nn.Module,
    guard: Guard,
    base_dir: Path,
    device: torch.device,
    processes: Processes,
) -> Synthesizer:
    adapter = config.adapter_config()
    shape = config.images.shape
    if isinstance(adapter, DeepInversionConfig):
        return DeepInversionSynthesizer(teacher, student, guard, adapter, shape, device, processes=processes)
    generator = build_model(_generator_spec(config), "generator", base_dir).to(device)
    latent_dim = config.latent_dim
    if isinstance(adapter, CMIConfig):
        return CMISynthesizer(
            teacher, student, generator, latent_dim, guard, adapter, shape, device, processes=processes
        )
    return VanillaSynthesizer(
        teacher, student, generator, latent_dim, guard, adapter, shape, device, processes=processes
    )


def load_evaluation(spec: EvaluationSpec, base_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation images, float (N, C, H, W) in [0, 1], and integer labels (N,).

    :raises ConfigError: naming ``evaluation.data`` / ``evaluation.dataset`` when
        the file or callable is missing or gives something else.
    """
    field = "evaluation.data" if spec.data is not None else "evaluation.dataset"
    if spec.data is not None:
        path = (base_dir / spec.data).resolve()
        try:
            with np.load(path, allow_pickle=False) as arrays:
                images, labels = torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"])
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(field, f"cannot read 'images' and 'labels' from {path}: {exc}") from None
    else:
        module_name, _, attribute = str(spec.dataset).partition(":")
        module = import_named(module_name, base_dir, field)
        try:
            images, labels = getattr(module, attribute)()
        except (AttributeError, TypeError, ValueError) as exc:
            raise ConfigError(field, f"{spec.dataset} did not give (images, labels): {exc}") from None
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels) or not images.is_floating_point():
        raise ConfigError(
            field,
            f"wanted images (N, C, H, W) and labels (N,), got {tuple(images.shape)} {images.dtype} "
            f"and {tuple(labels.shape)}",
        )
    return images, labels.long()


@torch.no_grad()
def _accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: DistillConfig,
    device: torch.device,
    batch_size: int = 500,
) -> float:
    if tuple(images.shape[1:]) != config.images.shape:
        raise ConfigError(
            "evaluation",
            f"evaluation images are {tuple(images.shape[1:])}, the teacher takes {config.images.shape}",
        )
    was_training = model.training
    model.eval()
    correct = 0
    for begin in range(0, len(images), batch_size):
        x = config.images.normalization.normalize(images[begin : begin + batch_size].to(device))
        correct += int((model(x).argmax(1).cpu() == labels[begin : begin + batch_size]).sum())
    model.train(was_training)
    return correct / len(images)


def _summary(
    config: DistillConfig, result: TrainResult, guard: Guard, device: torch.device
) -> dict[str, Any]:
    last = result.history[-1] if result.history else {}
    prior = guard.bn_prior
    evaluations = result.evaluations
    summary: dict[str, Any] = {
        "method": config.method,
        "iterations": len(result.history),
        "guard": "off" if not guard.enabled else (prior.verdict if prior is not None else "on (no BN prior)"),
        "final_metrics": {k: v for k, v in last.items() if math.isfinite(v)},
        "seconds_per_iteration": result.seconds_per_iteration
        if math.isfinite(result.seconds_per_iteration)
        else None,
        "synthesis_skipped": result.skipped,
        "device": str(device),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "versions": {"dfkd-guard": __version__, "torch": torch.__version__, "python": sys.version.split()[0]},
    }
    if prior is not None and prior.separation is not None:
        summary["guard_separation"] = sum(prior.separation) / len(prior.separation)
    if evaluations:
        summary["student_accuracy"] = evaluations[-1][1]["student_accuracy"]
    return summary


def _report(summary: dict[str, Any]) -> str:
    lines = [f"# dfkd-guard distill: {summary['method']}", ""]
    rows = [
        ("iterations", summary["iterations"]),
        ("guard", summary["guard"]),
        ("student accuracy", summary.get("student_accuracy", "not evaluated")),
        ("teacher accuracy", summary.get("teacher_accuracy", "not evaluated")),
        ("seconds per iteration (this process)", summary["seconds_per_iteration"]),
        ("synthesis steps skipped", summary["synthesis_skipped"]),
        ("device", summary["device"]),
        ("versions", ", ".join(f"{k} {v}" for k, v in summary["versions"].items())),
    ]
    lines += ["| | |", "|---|---|", *(f"| {k} | {_shown(v)} |" for k, v in rows), ""]
    lines += [
        "Final metrics (last iteration):",
        "",
        "```json",
        json.dumps(summary["final_metrics"], indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
