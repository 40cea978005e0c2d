"""A relative --out that the ranks resolve in different working directories (helper lock26, session 26).

Fault: rank 1, started in another working directory (a launcher's `cd`, another home on its node), looked for
rank 0's train.lock in another folder, waited out 90 s of pauses for NFS and then was refused as 'a node-local
disk', a cause the user did not have. Now every rank stops at once with exit 2, one line naming both folders and
the fix (an absolute --out). Two gloo ranks on this host, each in a folder of its own, stand for two nodes."""

from conftest import tiny_ngpt, tiny_train, train_on_two_nodes, write_ds_config, write_yaml


def test_relative_out_in_two_working_directories_stops_every_rank_at_once_naming_both(tiny_dataset, tmp_path):
    tmp_path = tmp_path.resolve()
    yaml = write_yaml(tmp_path / "run.yaml", tiny_ngpt(), tiny_train(3))
    ds = write_ds_config(tmp_path / "ds.json", stage=0, bf16=False, micro=2, accum=1)
    argv = ["--config", yaml, "--deepspeed_config", ds, "--data", tiny_dataset, "--out", "runs/x"]
    results = train_on_two_nodes(tmp_path, lambda rank, node: None, *argv)
    for code, stdout, stderr in results:
        assert code == 2, stdout + stderr
        assert stderr.endswith(
            f"error: --out runs/x is a relative path, and rank 1 runs in another working directory: it names "
            f"{tmp_path / 'node1' / 'runs' / 'x'} there, {tmp_path / 'node0' / 'runs' / 'x'} on rank 0. Pass an "
            "absolute --out\n"
        ), stderr
        assert "Traceback" not in stderr and "training nGPT" not in stdout, stdout + stderr
    # Rank 0 released its lock and wrote nothing else; rank 1 created nothing.
    assert sorted(p.name for p in (tmp_path / "node0" / "runs" / "x").iterdir()) == ["train.lock"]
    assert (tmp_path / "node0" / "runs" / "x" / "train.lock").read_text() == ""
    assert not (tmp_path / "node1" / "runs").exists()
