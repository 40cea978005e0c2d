"""ngpt-export's --out given twice, and its --help's defaults (cli20 review).

Fault: export's parser kept the last of an option given twice without a word: `ngpt-export RUN --out
exports/final ... --out exports/old --overwrite` (a script's options, then the user's) replaced exports/old,
and `--out e1 --out e2` wrote e2 only. Before: exit 0, 'exported ... (export /tmp/e2, step 20)'. Now: one
usage line naming both values, exit 2, before the checkpoint is read. --help now names the default --format
(ngpt_ds) and says --out is required."""

from __future__ import annotations

import pytest

from ngpt_ds.cli.export import main, parse_args


def test_out_given_twice_is_refused_before_the_checkpoint_is_read(tmp_path, capsys, monkeypatch):
    import ngpt_ds.infer

    monkeypatch.setattr(ngpt_ds.infer, "export_model", lambda *a, **kw: pytest.fail("the export ran"))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "run"), "--out", "exports/final", "--overwrite", "--out", "exports/old"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert (out, err) == (
        "",
        "error: --out given twice (exports/final, then exports/old); give it once; --help lists the options\n",
    )
    assert not (tmp_path / "exports").exists()


def test_help_names_the_default_format_and_the_required_out(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--out DIR folder to write (required; must not exist)" in text
    assert "--format {ngpt_ds,hf} ngpt_ds: the folder above (default); hf: Hugging Face transformers' layout" in text


def test_one_out_passes():
    args = parse_args(["runs/ngpt_tiny", "--out", "exports/a", "--format", "hf", "--out", "exports/a"])
    assert (args.checkpoint, args.out, args.format, args.overwrite) == ("runs/ngpt_tiny", "exports/a", "hf", False)
