"""An older --resume whose copy of the earlier lineage's tensorboard/ fails prints one readable line (helper msgs35).

Fault: resuming from an older step copies the run's metrics.jsonl and tensorboard/ beside the checkpoints it moves
aside (ngpt_ds.train.lineage). shutil.copytree reports the files it could not copy as shutil.Error, whose argument is
a list of (source, destination, why); the startup printed it as it was: 'error: cannot set up --out X
([('X/tensorboard/events...', 'X/checkpoints/abandoned-.../tensorboard/events...', '[Errno 28] No space left on
device')]); free space ...', a raw Python list. It now names the first file that failed, where it went and why.
"""

import re
import shutil
import sys

from conftest import run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml

MIB = 2**20


def test_a_failed_tensorboard_copy_names_the_file_and_why_in_one_line(tmp_path, tiny_dataset, mount_tmpfs):
    disk = mount_tmpfs(16 * MIB)
    out = disk / "run"
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(4, checkpoint_interval=2, keep_checkpoints=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)])  # steps 2 and 4
    big = out / "tensorboard" / "events.out.tfevents.1.earlier"  # too large for what is left free below
    big.write_bytes(b"\1" * (4 * MIB))
    with open(disk / "filler", "wb", buffering=0) as f:  # 2 MiB left: metrics.jsonl's copy fits, tensorboard's not
        f.write(b"\0" * (shutil.disk_usage(disk).free - 2 * MIB))
    older = run(
        [sys.executable, *train_cmd(config, ds, tiny_dataset, out, "--resume", out / "checkpoints" / "step_00000002")],
        check=False,
    )
    assert older.returncode == 2, older.stderr[-3000:]
    (line,) = [line for line in older.stderr.splitlines() if line.startswith("error:")]
    # old code: "error: cannot set up --out .../run ([('.../run/tensorboard/events.out.tfevents.1.earlier', ...)])"
    pattern = (
        rf"error: cannot set up --out {re.escape(str(out))} \(cannot copy {re.escape(str(big))} to "
        rf"{re.escape(str(out / 'checkpoints'))}/\.copying-abandoned-[0-9TZ-]+/tensorboard/{big.name}: \[Errno 28\] No space "
        r"left on device( \(and \d+ more file\(s\)\))?\); free space or fix permissions there and run again"
    )
    assert re.fullmatch(pattern, line), line


def test_other_os_errors_read_as_before():
    from ngpt_ds.train.job import _os_error

    assert _os_error(PermissionError(13, "Permission denied", "/x/config.yaml")) == (
        "[Errno 13] Permission denied: '/x/config.yaml'"
    )
    two = shutil.Error(
        [("/a/1", "/b/1", "[Errno 28] No space left on device: '/a/1' -> '/b/1'"), ("/a/2", "/b/2", "x")]
    )
    assert _os_error(two) == "cannot copy /a/1 to /b/1: [Errno 28] No space left on device (and 1 more file(s))"
    assert _os_error(shutil.SameFileError("/a is the same file as /a")) == "/a is the same file as /a"
