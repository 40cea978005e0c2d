"""An OSError while rank 0 checks and locks --out (an EIO or a permission error reading the folder or its parents, in
out_folder.check_out_folder) stops every rank with one line naming --out and the fix.

The fault (load38's reading of run_lock.lock_run, session 38): lock_run turned only NgptConfigError into rank 0's
answer in its broadcast; any OSError ended rank 0 alone with a traceback before the broadcast, and the other ranks
were left in it (gloo: 'Connection closed by peer'; NCCL: until train.dist_timeout_s). Real 2-rank gloo runs (plain
processes); rank 0's check raises EIO.
"""

from pathlib import Path

from conftest import run_ranks, tiny_ngpt, tiny_train, train_flags, write_ds_config, write_yaml

ROOT = Path(__file__).resolve().parents[1]

_EIO_ON_RANK_0 = r"""
import errno, os, runpy, sys
from ngpt_ds.train import out_folder, run_lock

# EIO_AT "check": out_folder's check of --out (before anything is made); "checkpoints": run_lock's check of
# <out>/checkpoints (after train.lock was created and taken)
owner, name = {"check": (out_folder, "_checkpoint_holding"), "checkpoints": (run_lock, "_checkpoints_not_writable")}[
    os.environ["EIO_AT"]
]
real = getattr(owner, name)
def eio(folder):
    if os.environ["RANK"] == "0":
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(folder))
    return real(folder)
setattr(owner, name, eio)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _eio_run(tmp_path: Path, dataset: Path, at: str, read: str) -> Path:
    """The 2-rank run, rank 0's check `at` raising EIO on the path `read` names (a function of --out): every rank
    stops with exit 2 and the one line naming --out, that path and the fix. Returns --out."""
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    wrapper = tmp_path / "eio.py"
    wrapper.write_text(_EIO_ON_RANK_0, encoding="utf-8")
    codes, outputs = run_ranks([wrapper, ROOT / "launch/train.py", *train_flags(config, ds, dataset, out)], EIO_AT=at)
    # old code ("check"): [1, 1]: rank 0 'OSError: [Errno 5] Input/output error' (a traceback), rank 1 gloo's error
    assert codes == [2, 2], outputs
    line = (
        f"error: cannot check or lock --out {out} ([Errno 5] Input/output error: '{read}'): check that folder and its "
        "parents (permissions, the filesystem), or choose another --out"
    )
    for rank, output in enumerate(outputs):
        errors = [text for text in output.splitlines() if text.startswith("error:")]
        assert errors == [line] and "Traceback" not in output, (rank, output[-3000:])
    return out


def test_an_os_error_of_rank_0s_out_check_stops_every_rank_with_one_line(tmp_path, tiny_dataset):
    out = _eio_run(tmp_path, tiny_dataset, "check", str((tmp_path / "run").resolve()))
    assert not (out / "train.lock").exists()


def test_an_os_error_after_rank_0_took_the_lock_leaves_no_lock_file_or_folder(tmp_path, tiny_dataset):
    """An OSError after rank 0 had created and taken train.lock (its check of <out>/checkpoints reading EIO) was
    lock_run's answer (8bcf35a) but not a refusal: acquire cleaned up only after an NgptConfigError, so the run left
    the train.lock it created, naming its dead process, in the folder it made (a refused run leaves nothing: the next
    run had said 'took over the stale lock of host=... pid=...'), and its descriptor open. Old code: 'assert not
    True' (out/train.lock left)."""
    out = _eio_run(tmp_path, tiny_dataset, "checkpoints", str(tmp_path / "run" / "checkpoints"))
    assert not (out / "train.lock").exists()
    assert not out.exists()  # made by the run, and left empty
