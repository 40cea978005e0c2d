"""--overwrite replaces only a folder of the same kind, never the source being read.

Each refusal: exit 2 with one message, and the folder it would have replaced is byte-for-byte
still there. The export cases work on a copy of the shared tiny run (test_infer_export's `trained`).
"""

import json
import shutil
import sys

import pytest
from test_infer_export import exported, trained  # noqa: F401  (session fixtures)

from conftest import REPO, run


def snapshot(folder):
    """Every file under `folder` with its bytes: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(trained, tmp_path):  # noqa: F811
    """A private copy of the trained run inside tmp_path/parent/, so a wrong delete costs nothing shared."""
    dest = tmp_path / "parent" / "run"
    shutil.copytree(trained["out"], dest)
    (tmp_path / "parent" / "notes.txt").write_text("not an export\n")
    return dest


def export_cli(source, out, *extra):
    return run([sys.executable, REPO / "launch/export.py", source, "--out", out, "--overwrite", *extra], check=False)


def assert_refused(proc, fragment):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_export_out_equal_to_the_run_is_refused(run_copy):
    before = snapshot(run_copy)
    assert_refused(export_cli(run_copy, run_copy), "is the checkpoint being exported or contains it")
    assert snapshot(run_copy) == before


def test_export_out_set_to_a_parent_of_the_run_is_refused(run_copy):
    parent = run_copy.parent
    before = snapshot(parent)
    assert_refused(export_cli(run_copy, parent), "is the checkpoint being exported or contains it")
    assert snapshot(parent) == before


def test_export_out_inside_the_checkpoint_is_refused(run_copy):
    checkpoint = next((run_copy / "checkpoints").glob("step_*"))
    inner = checkpoint / "export"  # would be written into the checkpoint it reads
    before = snapshot(run_copy)
    assert_refused(export_cli(run_copy, inner), "is inside the checkpoint being exported")
    assert snapshot(run_copy) == before


def test_export_out_set_to_an_unrelated_folder_is_refused(run_copy, tmp_path):
    unrelated = tmp_path / "my_documents"
    unrelated.mkdir()
    (unrelated / "thesis.tex").write_text("precious\n")
    assert_refused(export_cli(run_copy, unrelated), "holds no exported model")
    assert (unrelated / "thesis.tex").read_text() == "precious\n"
    assert [p.name for p in unrelated.iterdir()] == ["thesis.tex"]


def test_export_out_that_is_a_file_is_refused(run_copy, tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"\x00" * 16)
    assert_refused(export_cli(run_copy, target), "is a file, not a folder holding an exported model")
    assert target.read_bytes() == b"\x00" * 16


def test_export_overwrite_replaces_an_existing_export(run_copy, exported, tmp_path):  # noqa: F811
    previous = tmp_path / "previous_export"
    shutil.copytree(exported, previous)
    (previous / "stale.txt").write_text("from an older export\n")
    proc = export_cli(run_copy, previous)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in previous.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.model",
    ]


def prepare_cli(corpus, out, *extra):
    return run(
        [
            sys.executable,
            REPO / "launch/prepare_data.py",
            "--input",
            corpus,
            "--out",
            out,
            "--overwrite",
            "--vocab-size",
            400,
            "--workers",
            1,
            "--no-progress",
            *extra,
        ],
        check=False,
    )


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus" / "docs.jsonl"
    path.parent.mkdir()
    import pydoc_data.topics

    with path.open("w") as f:
        for text in list(pydoc_data.topics.topics.values())[:60]:
            f.write(json.dumps({"text": text}) + "\n")
    return path


def test_prepare_overwrite_of_an_unrelated_folder_is_refused(corpus, tmp_path):
    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "cat.jpg").write_bytes(b"\xff\xd8 cat")
    assert_refused(prepare_cli(corpus, unrelated), "holds no prepared dataset (no meta.json)")
    assert (unrelated / "cat.jpg").read_bytes() == b"\xff\xd8 cat"


def test_prepare_overwrite_of_a_folder_holding_the_input_is_refused(corpus, tmp_path):
    folder = corpus.parent
    (folder / "meta.json").write_text(json.dumps({"format": "ngpt_ds-token-shards", "format_version": 1}))
    before = snapshot(folder)
    assert_refused(prepare_cli(corpus, folder), "is the input or contains it")
    assert_refused(prepare_cli(folder, folder), "is the input or contains it")
    assert snapshot(folder) == before


def test_prepare_overwrite_replaces_a_dataset(corpus, tmp_path):
    out = tmp_path / "ds"
    assert prepare_cli(corpus, out).returncode == 0
    (out / "stale.bin").write_bytes(b"old")
    proc = prepare_cli(corpus, out)
    assert proc.returncode == 0, proc.stderr
    assert not (out / "stale.bin").exists() and (out / "meta.json").is_file()


def test_export_config_cannot_point_the_tokenizer_outside_its_folder(exported, tmp_path):  # noqa: F811
    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.infer import load

    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    shutil.copyfile(folder / "tokenizer.model", tmp_path / "elsewhere.model")
    config = json.loads((folder / "config.json").read_text())
    for bad in ("../elsewhere.model", str(tmp_path / "elsewhere.model")):
        config["tokenizer"]["file"] = bad
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(NgptConfigError, match="tokenizer.file .* must name a file inside the export folder"):
            load(folder)


def test_prepare_overwrite_of_a_dataset_a_run_was_started_in_is_refused(corpus, tmp_path):
    """Fault: a run trained with --out set to its --data folder, and the next `prepare_data.py --out <that
    folder> --overwrite` replaced the folder whole, deleting the run's checkpoints with it."""
    out = tmp_path / "ds"
    assert prepare_cli(corpus, out).returncode == 0
    (out / "train.lock").write_text("")
    fake_step = out / "checkpoints" / "step_00000002"
    fake_step.mkdir(parents=True)
    (fake_step / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    before = snapshot(out)
    assert_refused(
        prepare_cli(corpus, out),
        f"--out {out} also holds a training run (train.lock, checkpoints); --overwrite would delete it with the "
        f"folder. Move the run out of {out} first, or choose another path",
    )
    assert snapshot(out) == before


def test_prepare_overwrite_of_a_dataset_holding_a_run_in_a_subfolder_is_refused(corpus, tmp_path):
    """Fault: --overwrite refused a dataset folder holding a run's train.lock or checkpoints/ only at its top:
    a run started below its --data folder (`--out <data>/runs/r1`, as runs were before the startup refused
    it, or a run folder moved there) was deleted, checkpoints and all, by the next `prepare_data.py --out
    <data> --overwrite`, exit 0."""
    out = tmp_path / "ds"
    assert prepare_cli(corpus, out).returncode == 0
    run = out / "runs" / "r1"
    fake_step = run / "checkpoints" / "step_00000002"
    fake_step.mkdir(parents=True)
    (fake_step / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    (run / "train.lock").write_text("")
    before = snapshot(out)
    assert_refused(
        prepare_cli(corpus, out),
        f"--out {out} also holds a training run (runs/r1/train.lock, runs/r1/checkpoints); --overwrite would "
        f"delete it with the folder. Move the run out of {out} first, or choose another path",
    )
    assert snapshot(out) == before
