"""The files a bench report is built from: the invocation record and compact copies for committing.

A training ``dfkd-guard bench`` writes ``<out>/invocations/<report name>.json``:
the command and the config (:func:`config_record`) of that report, and the
names of the run and teacher records it reads (:func:`record_names`). With
those records under ``runs/`` and ``teacher_metrics/`` it is all a report
needs, so a folder holding them (:func:`export_records`) rewrites the report
byte for byte (``dfkd-guard bench --out FOLDER --rederive NAME``), also after
a later version has changed the defaults that a run's id is hashed from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dfkd_guard.errors import DfkdGuardError
from dfkd_guard.serialization import write_json_atomic

from .config import BenchConfig
from .runner import (
    EARLIER_GUARD_VALUES,
    enumerate_runs,
    ntl_kind,
    run_id,
    run_path,
    teacher_kind,
    teacher_record_file,
    teacher_record_id,
)

__all__ = [
    "INVOCATIONS",
    "compact_json",
    "config_record",
    "export_records",
    "invocation_path",
    "read_invocation",
    "record_names",
    "report_command",
    "run_key",
    "stored_config",
    "stored_report_names",
    "teacher_record_ids",
    "teacher_record_paths",
    "write_invocation",
]

#: Folder of the invocation records, in an output folder.
INVOCATIONS = "invocations"
#: Config fields that say where files go, not what ran: left out of the invocation record and the report.
_LOCATION_FIELDS = ("output_dir", "teacher_cache_dir")


def config_record(config: BenchConfig) -> dict[str, Any]:
    """``config`` as JSON data without its location fields (``output_dir``, ``teacher_cache_dir``)."""
    data = config.model_dump(mode="json")
    for name in _LOCATION_FIELDS:
        del data[name]
    return data


def run_key(setting: str, adapter: str, row: str, seed: int) -> str:
    """The key of a run in an invocation record: ``"<setting>/<adapter>/<row>/<seed>"``."""
    return f"{setting}/{adapter}/{row}/{seed}"


def record_names(config: BenchConfig) -> dict[str, Any]:
    """The files ``config``'s report reads: ``runs`` (run key -> run id) and ``teachers`` (teacher record ids)."""
    runs = {
        run_key(spec.setting, spec.adapter, spec.row, spec.seed): run_id(config, spec)
        for spec in enumerate_runs(config)
    }
    return {"runs": runs, "teachers": teacher_record_ids(config)}


def invocation_path(out: Path, report_name: str) -> Path:
    return Path(out) / INVOCATIONS / f"{report_name}.json"


def write_invocation(config: BenchConfig, out: Path, command: str) -> Path:
    """Store the command and config of ``config``'s report in ``out``; returns the file."""
    path = invocation_path(out, config.report_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"command": command, "config": config_record(config), **record_names(config)}, path)
    return path


def read_invocation(out: Path, report_name: str) -> dict[str, Any] | None:
    """The invocation record of report ``report_name`` in ``out``, or None where there is none."""
    path = invocation_path(out, report_name)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def stored_report_names(out: Path) -> list[str]:
    """The reports with an invocation record in ``out``, sorted."""
    return sorted(path.stem for path in (Path(out) / INVOCATIONS).glob("*.json"))


def stored_config(out: Path, report_name: str) -> BenchConfig:
    """The config stored with report ``report_name`` in ``out``.

    :raises DfkdGuardError: naming the file, when there is none.
    """
    record = read_invocation(out, report_name)
    if record is None:
        raise DfkdGuardError(
            f"{invocation_path(out, report_name)}: no invocation record of report {report_name!r}; "
            f"stored: {', '.join(stored_report_names(out)) or 'none'}"
        )
    return BenchConfig.from_mapping(_with_earlier_guard_values(record["config"]))


def _with_earlier_guard_values(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config record with the guard fields it predates set to the values its runs ran with."""
    guards = [config["guard"], *config.get("guard_variants", {}).values()]
    for guard in guards:
        for (section, name), earlier in EARLIER_GUARD_VALUES.items():
            if section in guard:
                guard[section].setdefault(name, earlier)
    return config


def report_command(config: BenchConfig, out: Path, command: str | None) -> str:
    """The command a report names: the stored one when its config is ``config``, else ``command``.

    ``import_dir`` is left out of the comparison: it says where the config file was read from (a relative
    or an absolute path to its folder), not what ran.
    """
    record = read_invocation(out, config.report_name)
    if record is None:
        return command or "(run from Python)"
    stored, current = _with_earlier_guard_values(record["config"]), config_record(config)
    for data in (stored, current):
        data.pop("import_dir", None)
    return str(record["command"]) if stored == current else command or "(run from Python)"


def teacher_record_ids(config: BenchConfig) -> list[str]:
    """The records of the teachers ``config``'s report shows, in report order."""
    ids = []
    for setting in config.settings:
        kinds = dict.fromkeys(
            [teacher_kind(config, row, setting) for row in config.rows] + [ntl_kind(config, setting)]
        )
        ids += [teacher_record_id(config, setting, kind) for kind in kinds]
    return ids


def teacher_record_paths(config: BenchConfig, out: Path) -> list[Path]:
    """Where the records of the teachers ``config``'s report shows are stored, in report order."""
    return [teacher_record_file(out, record_id) for record_id in teacher_record_ids(config)]


def compact_json(data: Any) -> str:
    """One line of JSON, keys sorted, no spaces, then a newline."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"


def export_records(config: BenchConfig, source: Path, destination: Path, command: str | None) -> list[Path]:
    """Copy what ``config``'s report reads from ``source`` into ``destination``; returns the files written.

    The stored run and teacher records become compact JSON (:func:`compact_json`),
    one file per record under the same names; the invocation record names
    :func:`report_command` of ``source``. Other files in ``destination`` stay.
    """
    source, destination = Path(source), Path(destination)
    records = [run_path(config, spec, source) for spec in enumerate_runs(config)]
    records += teacher_record_paths(config, source)
    written = []
    for path in records:
        if path.is_file():
            target = destination / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(compact_json(json.loads(path.read_text(encoding="utf-8"))), encoding="utf-8")
            written.append(target)
    written.append(write_invocation(config, destination, report_command(config, source, command)))
    return written
