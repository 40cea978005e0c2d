"""Faults of ngpt-prepare's local --input names (ngpt_ds.data.local_inputs, sources):

- a named pipe or a device given as --input was "no such file; check the path", though it exists: a corpus is read
  several times (the tokenizer's sample, then every document), which a stream does not allow;
- a file whose name holds a newline split the one `error:` line the command prints in two (the name printed raw),
  so a log reader or a wrapper took its second half for another line.

Guarded, not faults (they passed before): a corpus folder holding a symlink loop and a named pipe is read, its one
file's documents, without a hang; a .parquet that is not parquet is named with the fix."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("prepare_data_cli", REPO / "launch" / "prepare_data.py")
assert _spec is not None and _spec.loader is not None
_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cli)

STREAM_FIX = (
    "not a file: a corpus is read several times (the tokenizer's sample, then every document), which only a file "
    "allows; save the stream to a file and pass that\n"
)


def _prepare(args: list[str], out: Path, capsys) -> tuple[int, str]:
    code = _cli.main(["--out", str(out), "--no-progress", "--vocab-size", "300", *args])
    return code, capsys.readouterr().err


def test_a_named_pipe_given_as_input_is_named_as_one(tmp_path, capsys):
    pipe = tmp_path / "corpus.jsonl"
    os.mkfifo(pipe)
    code, err = _prepare(["--input", str(pipe)], tmp_path / "out", capsys)
    assert (code, err) == (2, f"error: --input {str(pipe)!r} is a named pipe (FIFO), {STREAM_FIX}")
    assert not (tmp_path / "out").exists()


def test_a_device_given_as_input_is_named_as_one(tmp_path, capsys):
    code, err = _prepare(["--input", "/dev/zero"], tmp_path / "out", capsys)
    assert (code, err) == (2, f"error: --input '/dev/zero' is a device, {STREAM_FIX}")


def test_a_file_name_with_a_newline_keeps_the_error_on_one_line(tmp_path, capsys):
    corpus = tmp_path / "part\n1.jsonl"
    corpus.write_text('{"body": "a document under another field"}\n', encoding="utf-8")
    code, err = _prepare(["--input", str(corpus)], tmp_path / "out", capsys)
    name = repr(str(corpus))
    assert code == 2
    assert err.splitlines() == [
        f"error: json files {name} (1 file), text field 'text': no text field 'text' in {name}; its fields are "
        "body; pass --text-field with one of them, or leave that file out"
    ]


def test_a_folder_with_a_link_loop_and_a_pipe_reads_its_file(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jsonl").write_text('{"text": "one document"}\n', encoding="utf-8")
    (folder / "sub" / "up").symlink_to("..")
    (folder / "self").symlink_to("self")
    os.mkfifo(folder / "b.jsonl")
    script = (
        "import sys\nfrom ngpt_ds.data.sources import CorpusSpec, open_corpus\n"
        "print(list(open_corpus(CorpusSpec(inputs=(sys.argv[1],))).texts()))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert (proc.returncode, proc.stdout) == (0, "['one document']\n"), proc.stderr[-2000:]


def test_a_parquet_file_that_is_not_parquet_is_named(tmp_path, capsys):
    bad = tmp_path / "c.parquet"
    bad.write_text("not parquet at all\n", encoding="utf-8")
    code, err = _prepare(["--input", str(bad)], tmp_path / "out", capsys)
    assert code == 2
    assert err.splitlines()[-1] == (
        f"error: parquet files {bad} (1 file), text field 'text': could not read {bad} (ArrowInvalid: Parquet magic "
        "bytes not found in footer. Either the file is corrupted or this is not a parquet file.); fix or remove that "
        "file, or check that its extension matches its contents"
    )
