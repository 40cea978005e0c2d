"""Fault (review39's reading of 7c29fb4, session 39): `checkpoint.log_unexpected` logs the traceback of any error no
check words, and took every OSError without an errno for one. `_place_universal` raises exactly such an OSError for
a case it words itself (a universal conversion's target that cannot be replaced: '<target> could not be replaced:
<why>'), so rank 0 printed a traceback above that one line. It is now a `checkpoint.WordedOSError`: no traceback,
the same line. A bug (here a KeyError) still logs its traceback."""

from __future__ import annotations

import pytest

from ngpt_ds.train import checkpoint


def test_a_universal_target_that_cannot_be_replaced_is_its_line_without_a_traceback(tmp_path, monkeypatch, capfd):
    folder = tmp_path / "checkpoints"
    converted, source, target = folder / "converted", folder / "step_00000002", folder / "step_00000002-universal"
    for made in (converted, source, target):
        made.mkdir(parents=True)
    # an older conversion of this run at the target, which a process still holds (discard's answer)
    monkeypatch.setattr(checkpoint, "marker_digest", lambda path: "digest")
    monkeypatch.setattr(checkpoint, "write_manifest", lambda path, manifest: None)
    monkeypatch.setattr(checkpoint, "written_here", lambda path: path == target)
    monkeypatch.setattr(checkpoint, "discard", lambda path: "a process still holds a file in it")
    with pytest.raises(OSError) as raised:
        checkpoint._place_universal(converted, target, source, {})
    assert str(raised.value) == f"{target} could not be replaced: a process still holds a file in it"
    assert converted.is_dir() and target.is_dir()  # nothing placed, nothing lost
    capfd.readouterr()
    checkpoint.log_unexpected(raised.value, f"writing {target}")
    # old code: 'Traceback (most recent call last)' ... 'OSError: ... could not be replaced'
    assert "Traceback" not in capfd.readouterr().err

    try:
        raise KeyError("a bug")
    except KeyError as bug:
        checkpoint.log_unexpected(bug, f"writing {target}")
    logged = capfd.readouterr().err
    assert "Traceback" in logged and "KeyError: 'a bug'" in logged, logged
