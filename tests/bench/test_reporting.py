"""The helpers the benchmark commands share to time work and describe the machine."""

from __future__ import annotations

import argparse
import datetime
import platform

import pytest
import torch

from dfkd_guard.bench.reporting import (
    busy_warning,
    calls_per_timing,
    command_line,
    cpu_model,
    format_number,
    machine_identity,
    machine_line,
    name_list,
    parse_names,
    positive_int,
    statistic,
    timed,
)


def test_positive_int_accepts_the_minimum_and_names_rejected_values() -> None:
    assert positive_int(0)("0") == 0
    assert positive_int(1)("12") == 12
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be >= 1, got 0"):
        positive_int(1)("0")
    with pytest.raises(argparse.ArgumentTypeError, match=r"'x'"):
        positive_int(1)("x")


def test_name_list_keeps_the_text_and_names_rejected_lists() -> None:
    allowed = ("small", "resnet18")
    assert name_list(allowed)("small, resnet18") == "small, resnet18"
    assert parse_names("small, resnet18", allowed) == ["small", "resnet18"]
    for text in ("small,vgg", " , ", ""):
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text)) as exc:
            name_list(allowed)(text)
        assert "small, resnet18" in str(exc.value)


def test_name_list_message_reaches_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench")
    parser.add_argument("--teachers", type=name_list(("small",)), default="small")
    with pytest.raises(SystemExit):
        parser.parse_args(["--teachers", "vgg"])
    assert "'vgg'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (0.012345, "0.0123"),
        (1.2345, "1.23"),
        (12.345, "12.3"),
        (1234.5, "1234"),
        (-0.5, "-0.500"),
        (float("inf"), "inf"),
    ],
)
def test_format_number_gives_three_significant_digits_without_exponents(value: float, text: str) -> None:
    assert format_number(value) == text


def test_cpu_model_tells_generations_behind_one_name_apart() -> None:
    zen3 = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
    )
    zen3 += "stepping\t: 1\nflags\t\t: fpu sse4_2 avx avx2\n\nprocessor\t: 1\nmodel name\t: other\n"
    assert cpu_model(zen3) == "AMD EPYC (cpu family 25, model 1, stepping 1, avx2)"
    zen4 = zen3.replace("model\t\t: 1", "model\t\t: 17").replace("avx2\n", "avx2 avx512f\n")
    assert cpu_model(zen4) == "AMD EPYC (cpu family 25, model 17, stepping 1, avx512f)"
    assert cpu_model("") == cpu_model("\n")  # no cpuinfo: the platform's name alone
    assert "(" not in cpu_model("")


def test_machine_line_names_torch_cores_and_date() -> None:
    started = datetime.datetime(2024, 5, 6, 7, 8, tzinfo=datetime.timezone.utc)
    line = machine_line(started, "0.10, 0.20, 0.30")
    assert f"torch {torch.__version__}" in line
    assert f"{torch.get_num_threads()} threads" in line
    assert "logical cores" in line and "load average 0.10, 0.20, 0.30" in line
    assert line.endswith("2024-05-06 07:08 UTC")
    # what the machine is, without when: the same for every run on it
    identity = machine_identity(line)
    assert identity == machine_identity(machine_line(None, "3.00, 2.00, 1.00"))
    assert (
        "load average" not in identity
        and "UTC" not in identity
        and identity.endswith(f"Python {platform.python_version()}")
    )


def test_busy_warning_only_above_the_core_count() -> None:
    assert busy_warning("0.00, 0.00, 0.00 at start, n/a at end") == ""
    assert "busy" in busy_warning("100000.00, 0.00, 0.00")
    assert "busy" in busy_warning("0.10, 0.00, 0.00 at start, 100000.00, 0.00, 0.00 at end")
    # Only the 1-minute average counts: the longer ones remember work done before the run.
    assert busy_warning("0.10, 100000.00, 100000.00 at start, 0.20, 100000.00, 100000.00 at end") == ""


def test_command_line_skips_options_left_to_none() -> None:
    args = argparse.Namespace(batch=8, repeats=None, teacher_steps=20, out=None)
    options = ("--batch", "--repeats", "--teacher-steps", "--out")
    assert command_line("dfkd-guard demo", args, options) == "dfkd-guard demo --batch 8 --teacher-steps 20"


def test_timing_helpers() -> None:
    calls = []
    assert timed(lambda: calls.append(1), 3) >= 0 and len(calls) == 3
    assert calls_per_timing(lambda: None, 1.0) == 1  # a long task is not run again
    assert 1 < calls_per_timing(lambda: None, 1e-6) <= 100
    assert statistic("median")([3.0, 1.0, 2.0]) == 2.0 and statistic("min")([3.0, 1.0, 2.0]) == 1.0
    with pytest.raises(ValueError, match="'mean'"):
        statistic("mean")
