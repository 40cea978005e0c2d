"""--input values an operator's script gives by mistake."""

from __future__ import annotations

import pytest

from ngpt_ds.cli.prepare import main


@pytest.mark.parametrize("inputs", [[""], ["  "], ["corpus.jsonl", ""]])
def test_an_empty_input_name_is_refused_in_one_line(tmp_path, capsys, inputs):
    """`--input "$CORPUS"` with CORPUS unset gave `--input ''`, which ended in an IndexError traceback from
    datasets' hub lookup (and '  ' was looked up on the hub as a dataset name)."""
    (tmp_path / "corpus.jsonl").write_text('{"text": "one"}\n', encoding="utf-8")
    argv = ["--input", *(str(tmp_path / i) if i.strip() else i for i in inputs), "--out", str(tmp_path / "ds")]
    assert main([*argv, "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --input {inputs[-1]!r}: an empty name (an unset shell variable?); pass files, a glob, a folder or "
        "a hub dataset name"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]
