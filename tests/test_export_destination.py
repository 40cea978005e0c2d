"""launch/export.py to a destination it cannot write: a read-only folder is named before the checkpoint is
read, and a disk that fills up while the export is written is one error naming the folder and the reason
(exit 2), with nothing left behind; never a traceback after all the loading work."""

import subprocess
import sys

import pytest
from test_infer_export import trained  # noqa: F401  (session fixture)

from conftest import REPO, cpu_env


def test_a_read_only_destination_is_refused_before_the_checkpoint_is_read(trained, mount_tmpfs, monkeypatch):  # noqa: F811
    """Fault (review): export to a read-only folder read and consolidated the whole checkpoint, then ended in an
    OSError traceback (Read-only file system, exit 1) making its staging folder."""
    import ngpt_ds.infer.export as export
    from ngpt_ds.errors import NgptConfigError

    read_only = mount_tmpfs(1024 * 1024, read_only=True)
    loads = []
    monkeypatch.setattr(export, "load_checkpoint", lambda *a, **kw: loads.append(a))
    for out in (read_only / "export", read_only / "exports" / "export"):
        with pytest.raises(NgptConfigError) as err:
            export.export_model(trained["out"], out)
        assert str(err.value) == (
            f"cannot export to {out}: its folder {out.parent} cannot be written (Read-only file system); "
            "choose another --out"
        )
    assert loads == []
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("fmt", ["ngpt_ds", "hf"])
def test_a_disk_that_fills_up_while_exporting_is_one_error_naming_the_folder(trained, mount_tmpfs, fmt):  # noqa: F811
    """Fault (review): export to a filesystem without room for the weights ended, after loading the checkpoint,
    in safetensors' own traceback (SafetensorError: ... No space left on device, exit 1). Now exit 2 with one
    line naming the folder and the reason, and the partial staging folder removed."""
    if fmt == "hf":
        pytest.importorskip("transformers", reason="transformers is an optional extra: pip install -e .[hf]")
    full = mount_tmpfs(64 * 1024)  # the tiny model's weights are ~0.3 MB
    out = full / "export"
    proc = subprocess.run(
        [sys.executable, REPO / "launch/export.py", trained["out"], "--out", out, "--format", fmt],
        capture_output=True, text=True, env=cpu_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (message,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert message.startswith(f"error: cannot export to {out}: writing in {full} failed ("), message
    assert "No space left on device" in message, message
    assert message.endswith("); nothing was exported. Free space there or choose another --out"), message
    assert list(full.iterdir()) == []
