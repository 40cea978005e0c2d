"""The tokenizer files of a folder are judged by what is opened, not only by a look at the path before.

Fault: saved_weights.check_tokenizer_files looked at tokenizer.json with os.stat (a regular file) and then opened it
by its path to hash it: a file swapped for a named pipe between the two made the open wait forever (the config read,
and so from_pretrained or lm-eval's hf model, hung without a word). The open now does not wait (O_NONBLOCK) and the
open file's own fstat is checked, so the pipe is refused.
"""

from __future__ import annotations

import os

import pytest
from hf_exports import FIX

from conftest import fails_after


def test_red30_tokenizer_json_swapped_for_a_named_pipe_after_its_stat_is_refused_not_waited_on(tmp_path, monkeypatch):
    import hashlib

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.model import saved_weights

    target = tmp_path / "tokenizer.json"
    target.write_text('{"model": {}}')
    recorded = hashlib.sha256(target.read_bytes()).hexdigest()
    real_stat, real_lstat = os.stat, os.lstat
    seen: dict[str, os.stat_result] = {}

    def swapped_after_the_look(real):
        def look(path, *args, **kwargs):
            if os.fspath(path) != str(target):
                return real(path, *args, **kwargs)
            if not seen:  # the first look sees the regular file; the file is then swapped for a named pipe
                seen["regular"] = real(path, *args, **kwargs)
                target.unlink()
                os.mkfifo(target)
            return seen["regular"]  # every later look at the path still sees the file it saw

        return look

    monkeypatch.setattr(os, "stat", swapped_after_the_look(real_stat))
    monkeypatch.setattr(os, "lstat", swapped_after_the_look(real_lstat))
    with fails_after(10, "check_tokenizer_files on a tokenizer.json swapped for a named pipe"):
        with pytest.raises(NgptConfigError) as caught:
            saved_weights.check_tokenizer_files(tmp_path, recorded)
    monkeypatch.undo()
    assert str(caught.value) == f"{target} is a named pipe, not a tokenizer file of the folder; {FIX}"
    assert seen, "the swap never happened: the test did not exercise the window"


def test_a_tokenizer_json_larger_than_its_fstat_said_is_not_read_whole(tmp_path, monkeypatch):
    """Fault (review30a): the size was judged by the open file's fstat and then the file was read with no limit: a
    file still growing after the fstat (written into a shared folder meanwhile), or a filesystem that reports st_size
    0 (some FUSE mounts), was read whole into memory. The read itself is capped now."""
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.model import saved_weights

    target = tmp_path / "tokenizer.json"
    target.write_text('{"model": {}, "pad": "' + "x" * (1 << 20) + '"}')
    monkeypatch.setattr(saved_weights, "MAX_TOKENIZER_FILE_BYTES", 1 << 20)
    real_fstat = os.fstat

    def reports_size_zero(fd):  # as a FUSE mount that does not know the size
        info = real_fstat(fd)
        return os.stat_result((*info[:6], 0, *info[7:10]))

    monkeypatch.setattr(os, "fstat", reports_size_zero)
    with pytest.raises(NgptConfigError) as caught:
        saved_weights.check_tokenizer_files(tmp_path, None)
    monkeypatch.undo()
    assert str(caught.value) == (
        f"{target} holds more than the 1 MiB a tokenizer file may hold, not a tokenizer file of the folder; {FIX}"
    )
