"""Review of 7769172 (the text document bound): a damaged .xz --input stopped `ngpt-prepare` on a 40-line
`_lzma.LZMAError: Corrupt input data` traceback. The new scan (check_text_documents), like the json line scan before
it, skips a file it cannot decompress so that 'datasets' read names it, with its hint'; but lzma's error is no
OSError or ValueError, so the scan raised it, and datasets' read raised it too (sources._READ_ERRORS caught gzip's
and bz2's errors only). Now the read names the file in one line, as for a damaged .gz."""

from __future__ import annotations

import json
import lzma

import pytest

from ngpt_ds.cli.prepare import main


@pytest.mark.parametrize("name, body", [("notes.txt.xz", b"one\n\ntwo\n" * 500), ("rows.jsonl.xz", None)])
def test_a_damaged_xz_input_is_named_in_one_line(tmp_path, capsys, name, body):
    """Old code: '_lzma.LZMAError: Corrupt input data' (a traceback through check_text_documents, or for the json
    file through datasets' read)."""
    if body is None:
        body = b"".join(json.dumps({"text": f"document {i}"}).encode() + b"\n" for i in range(500))
    packed = lzma.compress(body)
    damaged = tmp_path / name
    damaged.write_bytes(packed[: len(packed) // 2] + b"\x00" * 64)
    argv = ["--input", str(damaged), "--out", str(tmp_path / "ds"), "--vocab-size", "300", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    assert (
        f"could not read {damaged} (LZMAError: Corrupt input data); fix or remove that file, or check that its "
        "extension matches its contents"
    ) in err, err[-3000:]
    assert not (tmp_path / "ds").exists()
