"""host_functions.settings: every REALM_* variable, read when asked for, with its default and checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from host_functions import native, settings
from host_functions.errors import RealmError
from host_functions.formats import gguf_file


def test_each_setting_is_read_when_asked_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(settings.HOME, str(tmp_path / "home"))
    monkeypatch.setenv(settings.MODEL, str(tmp_path / "m.gguf"))
    monkeypatch.setenv(settings.BACKEND, "numpy")
    monkeypatch.setenv(settings.THREADS, " 3 ")
    monkeypatch.setenv(settings.CPU_KERNELS, "portable")
    monkeypatch.setenv(settings.ADMIN_KEY, "k")
    assert settings.home() == tmp_path / "home"
    assert settings.model_path() == tmp_path / "m.gguf"
    assert (settings.backend(), settings.threads(), settings.cpu_kernels(), settings.admin_key()) == (
        "numpy", 3, "portable", "k")


def test_unset_or_blank_settings_take_their_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (settings.MODEL, settings.BACKEND, settings.THREADS, settings.CPU_KERNELS, settings.ADMIN_KEY):
        monkeypatch.setenv(name, "  ")
    monkeypatch.delenv(settings.HOME)
    monkeypatch.delenv(settings.CACHE, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert settings.home() == tmp_path / "data" / "realm"
    assert settings.cache_dir() == tmp_path / "cache" / "realm"
    assert (settings.model_path(), settings.backend(), settings.threads(), settings.cpu_kernels(),
            settings.admin_key()) == (None, "auto", None, "", None)


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_a_thread_count_that_is_not_a_positive_integer_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                                   value: str) -> None:
    monkeypatch.setenv(settings.THREADS, value)
    with pytest.raises(RealmError, match="REALM_THREADS=.*positive integer"):
        settings.threads()


def test_one_cache_directory_holds_every_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(settings.CACHE, str(tmp_path))
    assert native.cache_dir() == tmp_path / "native"
    assert gguf_file._index_cache_dir() == tmp_path / "gguf-index"
