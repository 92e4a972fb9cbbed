"""The first build of the cpu kernels says that it is compiling, once, on stderr; a built library is
found in the cache without a word."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from host_functions.native.build import COMPILE_NOTICE, build
from host_functions.native.variants import select_variant


def test_the_first_build_says_it_compiles_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REALM_CACHE", str(tmp_path))  # nothing built yet
    variant = select_variant()
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(build(variant))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = capfd.readouterr()
    assert len(set(paths)) == 1 and paths[0].is_file() and paths[0].is_relative_to(tmp_path)
    assert first.err.splitlines() == [COMPILE_NOTICE.format(variant=variant.name)] and first.out == ""
    assert build(variant) == paths[0]
    assert capfd.readouterr().err == ""
