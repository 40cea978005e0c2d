"""Fault (9c387da, ngpt_ds/train/config_identity.same_config_file): a config file recorded under a path that exists
here, but names the file under another name than the one this run was given (one storage bind-mounted at two points
of a node or container, /gpfs/u/exp and /workspace; a hard link), was compared by its resolved path only: another
file, so the run warned that --out holds another config's run and retention kept every checkpoint of the run (the
fault 9c387da fixed for a recorded path that names nothing here). The same file (same device and inode) is now the
same config. A hard link stands in for the bind mount, which needs root."""

import hashlib
import os

import yaml

from ngpt_ds.train.config_identity import other_config_warning, same_config_file


def _run_folder(tmp_path, recorded):
    out = tmp_path / "out"
    out.mkdir()
    digest = hashlib.sha256(recorded.read_bytes()).hexdigest()
    record = {"config_source": "a.yaml", "config_source_absolute": str(recorded), "config_source_sha256": digest}
    (out / "config.yaml").write_text(yaml.safe_dump(record))
    return out


def test_one_file_under_two_paths_is_the_same_config(tmp_path):
    (tmp_path / "mount_a").mkdir()
    (tmp_path / "mount_b").mkdir()
    recorded = tmp_path / "mount_a" / "a.yaml"
    recorded.write_text("model: {}\ntrain: {max_steps: 10}\n")
    here = tmp_path / "mount_b" / "a.yaml"
    os.link(recorded, here)
    out = _run_folder(tmp_path, recorded)
    assert same_config_file(recorded, here) is True
    assert other_config_warning(out, here) is None


def test_another_file_with_other_bytes_under_an_existing_path_is_still_another_config(tmp_path):
    recorded = tmp_path / "a.yaml"
    recorded.write_text("model: {}\ntrain: {max_steps: 10}\n")
    here = tmp_path / "b.yaml"
    here.write_text("model: {}\ntrain: {max_steps: 20}\n")
    out = _run_folder(tmp_path, recorded)
    assert same_config_file(recorded, here) is False
    warning = other_config_warning(out, here)
    assert warning == (
        f"--out {out} holds a run trained from {recorded}; this run continues it with {here}. Its checkpoints are "
        "kept (retention deletes only this config's own); to start a new run pass another --out"
    )
