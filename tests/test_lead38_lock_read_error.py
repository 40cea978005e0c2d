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
from ngpt_ds.train import out_folder

real = out_folder._checkpoint_holding
def holding(folder):
    if os.environ["RANK"] == "0":
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(folder))
    return real(folder)
out_folder._checkpoint_holding = holding
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_an_os_error_of_rank_0s_out_check_stops_every_rank_with_one_line(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    wrapper = tmp_path / "eio.py"
    wrapper.write_text(_EIO_ON_RANK_0, encoding="utf-8")
    codes, outputs = run_ranks([wrapper, ROOT / "launch/train.py", *train_flags(config, ds, tiny_dataset, out)])
    # old code: [1, 1]: rank 0 'OSError: [Errno 5] Input/output error' (a traceback), rank 1 gloo's error
    assert codes == [2, 2], outputs
    line = (
        f"error: cannot check or lock --out {out} ([Errno 5] Input/output error: '{out.resolve()}'): check that "
        "folder and its parents (permissions, the filesystem), or choose another --out"
    )
    for rank, output in enumerate(outputs):
        errors = [text for text in output.splitlines() if text.startswith("error:")]
        assert errors == [line] and "Traceback" not in output, (rank, output[-3000:])
    assert not (out / "train.lock").exists()
