"""tests/run.sh's cached lowest-DeepSpeed venv as two runs, or an operator's own venv, meet it."""

import os
import subprocess
from pathlib import Path

from conftest import REPO
from shell_stand_ins import run_sh, stand_in_env


def test_run_sh_does_not_delete_a_venv_it_did_not_build(tmp_path):
    """Fault: tests/run.sh deleted whatever venv NGPT_DS_MIN_VENV named when it lacked run.sh's stamp
    (`rm -rf`, then a new venv there): pointed at one's own venv, e.g. NGPT_DS_MIN_VENV=$VIRTUAL_ENV, that
    venv was gone with all its packages."""
    own = tmp_path / "own-venv"
    (own / "lib").mkdir(parents=True)
    (own / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (own / "lib" / "my-package").write_text("mine\n")
    proc = run_sh(tmp_path, NGPT_DS_MIN_VENV=str(own))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        f"error: NGPT_DS_MIN_VENV={own} is a venv tests/run.sh did not build (no .ngpt_ds_stamp); it "
        "would be deleted and rebuilt. Set NGPT_DS_MIN_VENV to a new path"
    )
    assert (own / "lib" / "my-package").read_text() == "mine\n"


def test_run_sh_rebuilds_its_own_venv_cut_short(tmp_path):
    """A venv run.sh began to build and was stopped in (Ctrl-C in pip: the stamp says 'building') is
    rebuilt, at NGPT_DS_MIN_VENV as at the default path; the finished one is reused."""
    for env in ({"NGPT_DS_MIN_VENV": str(tmp_path / "mine")}, {}):
        venv = tmp_path / "mine" if env else tmp_path / ".cache/ngpt_ds/venv-deepspeed-0.16.0-torch-2.13.0"
        venv.mkdir(parents=True)
        (venv / "pyvenv.cfg").write_text("")
        (venv / ".ngpt_ds_stamp").write_text("building\n")
        (venv / "half-installed").write_text("")
        proc = run_sh(tmp_path / ("a" if env else "b"), HOME=str(tmp_path), **env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"[tests] building {venv} (deepspeed==0.16.0, torch==2.13.0)" in proc.stdout
        assert (venv / ".ngpt_ds_stamp").read_text() == "deepspeed==0.16.0 torch==2.13.0 \n"
        assert not (venv / "half-installed").exists()


def _children_named(pid: int, name: str) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm, ppid = fields[0].split("(", 1)[1], int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and comm == name:
            found.append(int(stat.parent.name))
    return found


def test_run_sh_waits_for_another_run_using_the_same_venv(tmp_path):
    """Fault: two tests/run.sh (two clones on one machine) shared the cached lowest-DeepSpeed venv with no
    lock: one deleted and rebuilt it (a stamp it did not expect, a build cut short) while the other was
    building it or running its tests in it. run.sh now takes a lock beside the venv: exclusive to build,
    shared to test."""
    import fcntl
    import time

    venv = tmp_path / ".cache/ngpt_ds/venv-deepspeed-0.16.0-torch-2.13.0"
    venv.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("")
    (venv / ".ngpt_ds_stamp").write_text("building\n")  # another run's build, in progress
    (venv / "half-installed").write_text("")
    with open(str(venv) + ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the other run holds it
        env = stand_in_env(tmp_path)
        proc = subprocess.Popen(["bash", REPO / "tests/run.sh"], env=env, stdout=subprocess.PIPE, text=True)
        try:
            while proc.poll() is None and not _children_named(proc.pid, "flock"):
                time.sleep(0.05)
            assert proc.poll() is None, "run.sh finished without waiting for the lock: " + proc.stdout.read()
            assert (venv / "half-installed").exists()  # untouched while the other run holds the lock
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert f"[tests] building {venv}" in out and not (venv / "half-installed").exists()


def test_run_sh_uses_a_ready_venv_while_another_run_tests_with_it(tmp_path):
    """Two runs on one machine share a built venv: the second uses it while the first holds its shared lock
    (running its tests), instead of waiting for that whole pass."""
    import fcntl

    venv = tmp_path / ".cache/ngpt_ds/venv-deepspeed-0.16.0-torch-2.13.0"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("")
    (venv / ".ngpt_ds_stamp").write_text("deepspeed==0.16.0 torch==2.13.0 \n")
    env = stand_in_env(tmp_path)
    os.symlink(Path(env["PYTHON"]), venv / "bin" / "python")
    with open(str(venv) + ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # the other run, testing
        proc = subprocess.run(["bash", REPO / "tests/run.sh"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "building" not in proc.stdout and "[tests] DeepSpeed-sensitive tests on the lowest" in proc.stdout
