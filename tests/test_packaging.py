"""The distribution installs ``adapters/`` as ``dfkd_guard.adapters``, editable and as a wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dfkd_guard

ROOT = Path(__file__).resolve().parent.parent


def test_editable_install_maps_the_adapters_folder() -> None:
    import dfkd_guard.adapters

    assert Path(dfkd_guard.adapters.__file__).resolve() == ROOT / "adapters" / "__init__.py"
    assert Path(dfkd_guard.__file__).resolve() == ROOT / "dfkd_guard" / "__init__.py"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
    )
    (path,) = out.glob("dfkd_guard-*.whl")
    return path


def test_wheel_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "dfkd_guard/adapters/__init__.py" in names
    assert "dfkd_guard/py.typed" in names
    assert "dfkd_guard/hookspecs.py" in names
    assert not any(name.startswith("adapters/") for name in names), "adapters must not be a top-level package"
    assert any(name.startswith("dfkd_guard/bench/_data/") and name.endswith(".npz") for name in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "dfkd-guard = dfkd_guard.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    metadata = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    )
    for requirement in ("torch>=", "torchvision>=", "numpy>=", "pluggy>=", "pydantic>="):
        assert f"Requires-Dist: {requirement}" in metadata


def test_wheel_install_imports_adapters_from_site(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    code = "import dfkd_guard.adapters, dfkd_guard; print(dfkd_guard.adapters.__file__); print(dfkd_guard.__version__)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    adapters_file, version = result.stdout.split()
    assert Path(adapters_file).resolve() == (target / "dfkd_guard" / "adapters" / "__init__.py").resolve()
    assert version == dfkd_guard.__version__
