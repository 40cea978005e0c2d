"""Fault (left33): a resume from a checkpoint older than the run's last logged step did not say that the event
files in <out>/tensorboard keep the replaced steps' old values.

SummaryWriter(purge_step=k+1) writes a marker; TensorBoard drops the older values of steps > k when it reads the
files, but the files keep them, and any other reader of the event files (tbparse, an export of the scalars) gets
those steps twice, the old values first. The resume's line said only "(TensorBoard shows the new ones)". Now it
names the event files and what each reader sees. Here a run logged steps 3 and 4 past its step-2 checkpoint (its
step-4 save lost, as to a kill), and --resume auto trains them again.
"""

import sys
from pathlib import Path

from conftest import run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def _loss_steps(path: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [e.step for e in EventFileLoader(str(path)).Load() for v in e.summary.value if v.tag == "train/loss"]


def test_a_resume_names_the_event_files_that_keep_the_replaced_steps(tmp_path, tiny_dataset):
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=2, accum=1)
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "a.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2, keep_checkpoints=5))
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)])
    (first,) = sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    shutil.rmtree(out / "checkpoints/step_00000004")  # logged, never saved

    again = run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)])
    said = again.stdout + again.stderr
    line = (
        f"metrics.jsonl: moved the 3 record(s) of steps 3-4, after the resumed step 2, to "
        f"{out / 'metrics.replaced.jsonl'}: this run trains those steps again (TensorBoard shows the new ones); "
        f"their earlier values stay in the 1 event file(s) of {out / 'tensorboard'} ({first.name}): TensorBoard "
        "hides them, other readers of those files see those steps twice"
    )
    # Old code: the line ended at "(TensorBoard shows the new ones)".
    assert said.count(line) == 1, said[-3000:]
    # What the line says: TensorBoard shows steps 1-4 once; the files hold steps 3 and 4 twice.
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    files = sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 2 and files[0] == first
    assert [_loss_steps(f) for f in files] == [[1, 2, 3, 4], [3, 4]]
