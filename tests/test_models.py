"""realm.models: how a cached copy of the default model is judged before it is used."""

from __future__ import annotations

import hashlib
import os

from realm.models import _cached_state


def test_a_cached_file_is_good_once_hashed_and_damaged_when_changed_in_place(tmp_path):
    target = tmp_path / "model.gguf"
    data = bytes(range(256)) * 4096
    sha256 = hashlib.sha256(data).hexdigest()
    assert _cached_state(target, sha256) == "missing"
    target.write_bytes(data)
    assert _cached_state(target, sha256) == "good"
    assert (tmp_path / "model.gguf.verified").is_file()  # the next start only stats the file
    assert _cached_state(target, sha256) == "good"

    stat = target.stat()
    with target.open("r+b") as f:  # one byte changed, same size; the mtime moves
        f.seek(500_000)
        f.write(b"\xff" if data[500_000] != 0xFF else b"\x00")
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert _cached_state(target, sha256) == "damaged"

    target.write_bytes(data[:1000])  # truncated
    assert _cached_state(target, sha256) == "damaged"
