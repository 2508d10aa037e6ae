"""fcd_common.recordlog: keyed records in one append-only, fdatasync'd file."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from fcd_common import recordlog
from fcd_common.recordlog import RecordLog, read_records


class Rec(msgspec.Struct):
    n: int
    note: str = ""


def _log(path: Path, **kw: int) -> RecordLog[Rec]:
    out = RecordLog(path, Rec, **kw)
    out.load()
    return out


def test_puts_and_deletes_survive_a_reload_and_the_last_line_of_a_key_wins(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s" / "x.log"
    log = _log(path)
    log.put("a", Rec(1))
    log.put("b", Rec(2))
    log.put("a", Rec(3, "again"))
    log.delete("b")
    log.delete("nope")  # nothing to forget: nothing written
    log.close()
    assert path.read_bytes().count(b"\n") == 4
    assert RecordLog(path, Rec).load() == {"a": Rec(3, "again")}
    assert read_records(path, Rec) == {"a": Rec(3, "again")}
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_torn_last_line_is_cut_off_and_the_next_put_follows_a_whole_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.log"
    log = _log(path)
    log.put("a", Rec(1))
    log.close()
    with path.open("ab") as f:
        f.write(b'["b", {"n": 2')  # a crash mid-append
    log = RecordLog(path, Rec)
    assert log.load() == {"a": Rec(1)}
    log.put("c", Rec(3))
    log.close()
    assert RecordLog(path, Rec).load() == {"a": Rec(1), "c": Rec(3)}


def test_a_corrupt_line_in_the_middle_is_skipped_and_a_bad_record_is_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(b'["a", {"n": 1}]\n\x00\x00garbage\n["b", {"n": "two"}]\n["c", {"n": 3}]\n')
    log = RecordLog(path, Rec)
    assert log.load() == {"a": Rec(1), "c": Rec(3)}
    assert sorted(log.keys()) == ["a", "b", "c"]  # b does not decode, but is not deleted


def test_a_failed_append_is_truncated_so_no_torn_line_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.log"
    log = _log(path)
    log.put("a", Rec(1))
    size = path.stat().st_size

    def no_sync(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(recordlog.os, "fdatasync", no_sync)
    with pytest.raises(OSError):
        log.put("b", Rec(2))
    monkeypatch.undo()
    assert path.stat().st_size == size
    log.put("c", Rec(3))
    log.close()
    assert RecordLog(path, Rec).load() == {"a": Rec(1), "c": Rec(3)}


def test_the_file_is_compacted_to_the_live_records(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    log = _log(path, min_compact=20)
    log.put("keep", Rec(0))
    for i in range(100):
        log.put(f"k{i}", Rec(i))
        log.delete(f"k{i}")
    lines = path.read_bytes().count(b"\n")
    assert lines < 20  # 201 changes, one live record
    log.put("last", Rec(1))
    log.close()
    assert RecordLog(path, Rec).load() == {"keep": Rec(0), "last": Rec(1)}
    assert sorted(os.listdir(tmp_path)) == ["x.log"]  # no temp file left behind


def test_a_put_before_load_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        RecordLog(tmp_path / "x.log", Rec).put("a", Rec(1))
