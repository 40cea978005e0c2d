"""Fault (session 32): a run folder records its config file made absolute where the run started
(config_source_absolute). A cluster whose nodes mount the same shared storage under different paths (/gpfs/u/exp
on one node, /home/u/exp on another, not links of one another) recorded a path that names nothing on the other
node. A requeue there with the very same file compared the paths: it warned that --out holds a run "trained from
another file", and retention, which never deletes another config's checkpoints, kept every checkpoint of the run,
a week of them, until the disk filled.

Each record now also holds the sha256 of the config file's bytes (config_source_sha256). Where the recorded
absolute path names nothing here, the same bytes are the same file; a file edited since still counts as another.
The other node is imitated by rewriting the records a run left, as a run on that node writes them.
"""

from pathlib import Path

import yaml as pyyaml

from ngpt_ds.train.checkpoint import step_of
from ngpt_ds.train.config_identity import config_file_sha256, read_config_record, same_config_file
from ngpt_ds.train.manifest import build_manifest, write_manifest

from conftest import tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml

FOREIGN = "holds a run trained from"
OTHER_NODE = "/mnt/ngpt-ds-test-other-node-mount/exp/configs/a.yaml"  # a mount point this machine does not have


def steps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("step_") and "." not in p.name)


def as_if_trained_on_the_other_node(out: Path) -> None:
    """Every config.yaml the run left records the config file under the other node's mount point, each checkpoint
    sealed with it (its COMPLETE manifest), as a run on that node leaves them."""
    for path in [out / "config.yaml", *sorted((out / "checkpoints").glob("step_*/config.yaml"))]:
        record = pyyaml.safe_load(path.read_text())
        assert record["config_source_sha256"] == config_file_sha256(out.parent / "exp/configs/a.yaml")
        record["config_source_absolute"] = OTHER_NODE
        path.write_text(pyyaml.safe_dump(record, sort_keys=False))
        if path.parent.name.startswith("step_"):
            write_manifest(path.parent, build_manifest(path.parent, step_of(path.parent.name)))


def first_run(tmp_path, tiny_dataset):
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=2, accum=1)
    (tmp_path / "exp/configs").mkdir(parents=True)
    config = write_yaml(
        tmp_path / "exp/configs/a.yaml", tiny_ngpt(), tiny_train(8, checkpoint_interval=2, keep_checkpoints=2)
    )
    out = tmp_path / "run"
    train_run("configs/a.yaml", ds, tiny_dataset, out, cwd=tmp_path / "exp", forked=True)
    assert steps(out / "checkpoints") == ["step_00000006", "step_00000008"]
    as_if_trained_on_the_other_node(out)
    return ds, config, out


def test_the_same_file_under_another_nodes_mount_point_is_the_same_file(tmp_path, tiny_dataset):
    ds, _, out = first_run(tmp_path, tiny_dataset)
    again = train_run("configs/a.yaml", ds, tiny_dataset, out, "--max-steps", "12", cwd=tmp_path / "exp", forked=True)
    # The old code: "--out ... holds a run trained from /mnt/...", and all four steps kept.
    assert FOREIGN not in again.stdout + again.stderr
    assert steps(out / "checkpoints") == ["step_00000010", "step_00000012"]


def test_a_file_edited_since_under_another_mount_point_still_counts_as_another(tmp_path, tiny_dataset):
    ds, config, out = first_run(tmp_path, tiny_dataset)
    write_yaml(config, tiny_ngpt(), tiny_train(12, checkpoint_interval=2, keep_checkpoints=2, lr=2e-3))
    again = train_run("configs/a.yaml", ds, tiny_dataset, out, cwd=tmp_path / "exp", forked=True)
    assert f"--out {out} {FOREIGN} {OTHER_NODE}; this run continues it with" in again.stdout + again.stderr
    assert steps(out / "checkpoints") == ["step_00000006", "step_00000008", "step_00000010", "step_00000012"]


def test_records_without_the_digest_and_paths_that_exist_are_compared_by_path(tmp_path):
    """A record of an ngpt_ds before the digest, or a recorded path that exists here, is compared as before."""
    config = tmp_path / "a.yaml"
    config.write_text("model: {}\n")
    digest = config_file_sha256(config)
    assert digest is not None and len(digest) == 64
    assert not same_config_file(Path(OTHER_NODE), config)  # no digest recorded: another file
    assert same_config_file(Path(OTHER_NODE), config, digest)
    assert not same_config_file(Path(OTHER_NODE), config, "0" * 64)
    twin = tmp_path / "twin.yaml"  # the same bytes in another file that exists here: another file
    twin.write_text("model: {}\n")
    assert not same_config_file(twin, config, digest)
    saved = tmp_path / "config.yaml"
    saved.write_text(f"config_source: a.yaml\nconfig_source_absolute: {OTHER_NODE}\nconfig_source_sha256: {digest}\n")
    assert read_config_record(saved) == (OTHER_NODE, digest)
    saved.write_text("config_source: a.yaml\nconfig_source_sha256: 7\n")  # not a string: not used
    assert read_config_record(saved) == ("a.yaml", None)
