"""Two checkpoints with legacy `step N` COMPLETE markers are told apart (manifest.marker_digest).

Fault: marker_digest hashed the COMPLETE file only, and the `step 100\\n` an older ngpt_ds wrote is the same
for the step_100 of every run: lineage.json's complete_blake2b, the ranks' agreement on which checkpoint to
resume and the source of a universal conversion took another run's step_100 for this one.
"""

import json
from pathlib import Path

from ngpt_ds.train import checkpoint, lineage, manifest


def legacy(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(weights)
    (folder / "config.yaml").write_text("model: {}\n")
    (folder / "COMPLETE").write_text("step 100\n")
    return folder


def test_another_runs_legacy_step_is_not_taken_for_the_one_the_lineage_grew_from(tmp_path):
    """Fault: --resume of run B's legacy step_100 into a folder whose lineage grew from run A's legacy step_100.
    Before: ('auto', '--resume .../run_b/checkpoints/step_100 already started this run (...); continuing from
    its newest checkpoint, step_150 ...'): run A's lineage went on, B was never loaded. Now: B is resumed as
    asked, and naming A again (the same command rerun, a requeue) still continues the lineage."""
    a = legacy(tmp_path / "run_a/checkpoints/step_100", b"weights of run A")
    b = legacy(tmp_path / "run_b/checkpoints/step_100", b"weights of run B")
    out = tmp_path / "finetune"
    out.mkdir()
    lineage.record_origin(out, a)
    own = out / "checkpoints/step_150"
    own.mkdir(parents=True)
    (own / "COMPLETE").write_text("step 150\n")

    assert lineage.same_command_resume(out, str(b), b, restart=False) == (str(b), None)
    resume, line = lineage.same_command_resume(out, str(a), a, restart=False)
    assert resume == "auto"
    assert line == (
        f"--resume {a} already started this run ({out / 'lineage.json'}); continuing from its newest checkpoint, "
        f"step_150. Pass --resume {a} --restart-lineage to start over from it"
    )
    assert json.loads((out / "lineage.json").read_text())["complete_blake2b"] == manifest.marker_digest(a)


def test_the_legacy_digest_follows_the_tail_of_the_files_and_stays_where_the_folder_moves(tmp_path):
    """The same files give the same digest wherever the folder lies (lineage: 'identifies it even if moved');
    another byte at the end of a file (a torch zip's directory, with every tensor's CRC-32), another size or
    another marker give another. A manifest's digest is still the blake2b-128 of COMPLETE alone."""
    a = legacy(tmp_path / "a/step_100", b"x" * 100_000)
    moved = legacy(tmp_path / "elsewhere/step_100", b"x" * 100_000)
    assert manifest.marker_digest(a) == manifest.marker_digest(moved)
    tail = legacy(tmp_path / "tail/step_100", b"x" * 99_999 + b"y")
    head = legacy(tmp_path / "head/step_100", b"y" + b"x" * 99_999)  # before the last 64 KiB: not read
    longer = legacy(tmp_path / "longer/step_100", b"x" * 100_001)
    digests = {manifest.marker_digest(p) for p in (a, tail, longer)}
    assert len(digests) == 3
    assert manifest.marker_digest(head) == manifest.marker_digest(a)
    (moved / "COMPLETE").write_text("step 101\n")
    assert manifest.marker_digest(moved) not in digests

    fresh = tmp_path / "fresh/step_7"
    fresh.mkdir(parents=True)
    (fresh / "model.pt").write_bytes(b"w")
    manifest.write_manifest(fresh, manifest.build_manifest(fresh, 7))
    import hashlib

    expected = hashlib.blake2b((fresh / "COMPLETE").read_bytes(), digest_size=16).hexdigest()
    assert checkpoint.marker_digest(fresh) == expected
