"""The built wheel works where it is installed: shaders and guests are package data, not files that
only a source tree has. Builds the wheel, installs it into a fresh venv and runs it from elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from oracle import DATA

ROOT = Path(__file__).resolve().parent.parent
TINY = str(DATA / "tiny-llama-Q8_0.gguf")
# The environment of the subprocesses: without a PYTHONPATH, which would put another copy of Realm (a
# source tree's) before the wheel's.
ENV = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of this tree (setuptools leaves build/ in the tree it builds, which
    would carry files into the next wheel whatever pyproject says; build isolation takes setuptools
    from pip's index or cache)."""
    source = tmp_path_factory.mktemp("source") / "realm"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__",
                                                                 "tests", "e2e"))
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(source)],
                           capture_output=True, text=True, timeout=600, env=ENV)
    assert built.returncode == 0, built.stderr
    (path,) = dist.glob("realm-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv holding the wheel.

    The dependencies come from the test's own environment through a .pth line (no network, no
    reinstall of numpy and wgpu). That environment's editable install of Realm is not active there:
    its hook is itself a .pth file, and .pth files are only read in site directories, which an
    added path is not.
    """
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           str(wheel)], capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr
    return venv / "bin"


def test_the_wheel_carries_every_shader_and_guest(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shaders = {f"host_functions/shaders/{p.name}" for p in (ROOT / "shaders").glob("*.wgsl")}
    guests = {f"realm/guests/{p.name}" for p in (ROOT / "guest").iterdir() if p.suffix in (".wasm", ".c", ".h")}
    assert shaders and guests and (shaders | guests) <= names, sorted((shaders | guests) - names)


def test_the_installed_package_runs_from_its_own_files(installed, tmp_path):
    where = subprocess.run([str(installed / "python"), "-c",
                            "import host_functions, realm; print(host_functions.__file__); print(realm.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True, env=ENV).stdout.split()
    assert all(Path(p).is_relative_to(installed.parent) for p in where), where


def test_kernels_test_quick_passes_from_the_installed_wheel(installed, tmp_path):
    done = subprocess.run([str(installed / "realm"), "kernels", "test", "--quick", "--reps", "0", "--json"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results and all(r["passed"] for r in results)


@pytest.mark.parametrize("backend", ["wgpu", "numpy"])
def test_run_on_a_tiny_model_from_the_installed_wheel(installed, tmp_path, backend):
    done = subprocess.run([str(installed / "realm"), "run", "Once upon a time", "-m", TINY, "-b", backend,
                           "--temperature", "0", "--max-tokens", "4", "--json"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**ENV, "REALM_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["finish_reason"] == "length" and result["completion_tokens"] == 4
