"""Rank 0's part of a checkpoint save without DeepSpeed or collectives, and stand-in checkpoint folders: the
set-up of the tests of saving, retention and conversion around checkpoints/ (tests/test_save25_*.py)."""

from pathlib import Path

from ngpt_ds.train import checkpoint, manifest

WEIGHTS = "mp_rank_00_model_states.pt"


class NoParamsEngine:
    """What checkpoint._before_save and _need read of an engine: a module without parameters (the first save's
    estimate is then 0 bytes, so only the folder's checkpoints set the space need)."""

    class module:
        @staticmethod
        def parameters():
            return []


def checkpoint_files(folder: Path, content: bytes, name: str = WEIGHTS) -> Path:
    """A new folder holding `name` with `content` and a config.yaml, as a checkpoint holds them; no manifest."""
    folder.mkdir(parents=True)
    (folder / name).write_bytes(content)
    (folder / "config.yaml").write_text("model: {}\n")
    return folder


def complete_checkpoint(folder: Path, step: int, content: bytes) -> Path:
    """checkpoint_files sealed with a COMPLETE manifest of `step`."""
    checkpoint_files(folder, content)
    manifest.write_manifest(folder, manifest.build_manifest(folder, step))
    return folder


def rank0_save(checkpoints: Path, step: int, content: bytes = b"R" * 1000, keep: int = 5) -> Path:
    """Rank 0's part of a whole save of `step` (checkpoint.save without the collectives), retention included;
    returns the step's folder."""
    assert checkpoint._before_save(NoParamsEngine(), checkpoints, step) is None  # type: ignore[arg-type]
    tag = checkpoint.tag_for(step)
    tmp = checkpoint_files(checkpoints / (tag + checkpoint.TEMP_SUFFIX), content)
    checkpoint._finish_save(checkpoints, tmp, tag, manifest.build_manifest(tmp, step), keep)
    return checkpoints / tag
