"""--resume of an older checkpoint on a disk too full to keep the earlier lineage's logs (helper red35, session 35).

Fault: resuming from step k moves the newer checkpoints into checkpoints/abandoned-<time>/ with a copy of the run's
metrics.jsonl and tensorboard/ (ngpt_ds.train.lineage). The checkpoints were moved and lineage.json recorded first, the
copy made last: a disk too full for the copy stopped the startup ('cannot set up --out ... No space left on device')
with step_N already moved aside and the new lineage recorded. The same command run again, once space was freed, found
its lineage started and nothing newer to move: it never copied the logs (abandoned-*/metrics.jsonl stayed empty or cut
short, its tensorboard/ missing) nor moved summary.json, which the resumed run then overwrote: the earlier lineage's
record of how it ended was lost. The copy now comes first; one that fails leaves the run folder as it was.
"""

import shutil
import sys

from conftest import assert_complete, run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

MIB = 2**20


def test_an_older_resume_that_cannot_copy_the_logs_moves_nothing_and_the_rerun_keeps_them_all(
    tmp_path, tiny_dataset, mount_tmpfs
):
    disk = mount_tmpfs(16 * MIB)
    out = disk / "run"
    checkpoints = out / "checkpoints"
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(6, checkpoint_interval=2, keep_checkpoints=3))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)])  # steps 2, 4, 6
    # an earlier session's TensorBoard events, too large for what is left free below
    (out / "tensorboard" / "events.out.tfevents.1.earlier").write_bytes(b"\1" * (4 * MIB))
    before = {name: (out / name).read_bytes() for name in ("metrics.jsonl", "summary.json")}
    with open(disk / "filler", "wb", buffering=0) as f:  # 2 MiB left: the startup's small files fit, the copy not
        f.write(b"\0" * (shutil.disk_usage(disk).free - 2 * MIB))
    rollback = train_cmd(config, ds, tiny_dataset, out, "--resume", checkpoints / "step_00000004")

    refused = run([sys.executable, *rollback], check=False)
    assert refused.returncode == 2, refused.stderr[-3000:]
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: cannot set up --out {out} ("), line
    assert "No space left on device" in line, line
    # nothing moved nor recorded: the old code had moved step_6 aside and written lineage.json
    assert sorted(p.name for p in checkpoints.iterdir() if "step_" in p.name or "abandoned" in p.name) == [
        "step_00000002",
        "step_00000004",
        "step_00000006",
    ]
    assert not (out / "lineage.json").exists()
    assert {name: (out / name).read_bytes() for name in before} == before

    (disk / "filler").unlink()
    rerun = run([sys.executable, *rollback])
    assert "resuming from step 4: moved the 1 newer checkpoint folder(s) of the earlier lineage (step_00000006)" in (
        rerun.stdout + rerun.stderr
    ), rerun.stdout[-3000:]
    (abandoned,) = checkpoints.glob("abandoned-*")
    assert_complete(abandoned / "step_00000006")
    assert (abandoned / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]  # old code: b'' (the copy cut short)
    assert (abandoned / "summary.json").read_bytes() == before["summary.json"]  # old code: overwritten in place
    assert (abandoned / "tensorboard" / "events.out.tfevents.1.earlier").stat().st_size == 4 * MIB
    assert_complete(checkpoints / "step_00000006")  # the new lineage's
