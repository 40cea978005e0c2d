"""An operator's mistakes with --out, named at startup before anything is written (helper lock26, session 26).

Faults: a run refused for a linked checkpoints/ left an empty writer.lock in the running run's checkpoints/ and an
empty train.lock in its own --out; --out inside a shared checkpoint store or inside another run's folder was
accepted; --out on a file or a link to nothing was refused as 'not writable (File exists)'; --out `/`, the home
folder or the top of a git repository was accepted (the run's files among everything there). Each is checked on
ngpt_ds.train.run_lock.acquire, the trainer's first write into --out, which rank 0 calls and whose message every
rank prints (tests/test_checkpoint_lock.py runs the 2-rank trainer on its refusals)."""

import os
import socket
from pathlib import Path

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import out_folder, run_lock

HOST = socket.gethostname()


def refusal(out) -> str:
    with pytest.raises(NgptConfigError) as err:
        run_lock.acquire(out)
    return str(err.value)


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def run_folder(folder):
    """A run folder as a run leaves it: train.lock (emptied at exit), its config.yaml and checkpoints/."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "train.lock").write_text("")
    (folder / "config.yaml").write_text("config_source: tiny.yaml\nmodel: {}\ntrain: {}\n")
    return folder


def test_run_refused_for_linking_to_a_running_runs_checkpoints_leaves_no_lock_file_anywhere(tmp_path, hold):
    """Fault: b, whose checkpoints/ links to the checkpoints/ of running a, was refused but left an empty
    writer.lock in a's checkpoints/ (listed there as ['writer.lock'] on the old code) and an empty train.lock in
    b, which then passed for a run folder. Now both folders hold what they held before."""
    tmp_path = tmp_path.resolve()
    a = run_folder(tmp_path / "a")
    b = tmp_path / "b"
    b.mkdir()
    (b / "checkpoints").symlink_to(a / "checkpoints")
    pid = hold(a)
    message = refusal(b)
    assert message == (
        f"--out {b}: its checkpoints folder {a / 'checkpoints'} (checkpoints/ links there) is in use by the trainer "
        f"of --out {a} (host={HOST} pid={pid}; lock file {a / 'train.lock'}). Wait for it to finish or stop it, or "
        "give this run a checkpoints/ of its own"
    )
    assert listing(a / "checkpoints") == []
    assert listing(a) == ["checkpoints", "config.yaml", "train.lock"]
    assert listing(b) == ["checkpoints"]


def test_new_out_refused_for_its_checkpoints_leaves_no_folder_it_made(tmp_path):
    """A new --out refused once its train.lock was taken (its checkpoints/ is a file here) keeps no train.lock."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("notes")
    message = refusal(out)
    assert message.startswith(f"{out / 'checkpoints'} is not a folder: every checkpoint of the run is saved there")
    assert listing(out) == ["checkpoints"]
    assert (out / "checkpoints").read_text() == "notes"


def test_out_inside_another_runs_folder_is_refused_naming_it_and_the_fix(tmp_path):
    """Fault: --out runA/sub (often a relative --out given from inside runA) was accepted: the new run was then
    copied, moved and deleted with runA. Nothing is created."""
    tmp_path = tmp_path.resolve()
    a = run_folder(tmp_path / "runA")
    message = refusal(a / "sub")
    assert message == (
        f"--out {a / 'sub'} is inside the run folder {a}: the new run would be copied, moved and deleted with that "
        f"run. Pass a folder beside it (--out {tmp_path / 'sub'}), or --out {a} to continue that run"
    )
    assert listing(a) == ["checkpoints", "config.yaml", "train.lock"]


def test_out_inside_the_checkpoints_of_a_run_known_by_its_config_only_is_refused(tmp_path):
    """Fault: runA/checkpoints/new was accepted when runA had no train.lock and no complete checkpoint yet (a run
    folder copied without its lock, a run stopped before its first save): runA's config.yaml marks it a run."""
    tmp_path = tmp_path.resolve()
    a = tmp_path / "runA"
    (a / "checkpoints").mkdir(parents=True)
    (a / "config.yaml").write_text("config_source: tiny.yaml\nmodel: {}\ntrain: {}\n")
    message = refusal(a / "checkpoints" / "new")
    assert message.startswith(
        f"--out {a / 'checkpoints' / 'new'} is inside {a / 'checkpoints'}, the checkpoints folder of the run {a}: "
    )
    assert listing(a / "checkpoints") == []


@pytest.mark.parametrize("marker", ["writer.lock", "step_00000004"])
def test_out_inside_a_shared_checkpoint_store_is_refused(tmp_path, marker):
    """Fault: --out store/new, a store that runs' checkpoints/ link to, was accepted: the run's files and a
    checkpoints/ of its own among the store's checkpoints."""
    tmp_path = tmp_path.resolve()
    store = tmp_path / "store"
    store.mkdir()
    if marker == "writer.lock":
        (store / marker).write_text("")
    else:
        (store / marker).mkdir()
        (store / marker / "COMPLETE").write_text("")
    message = refusal(store / "new")
    held = marker if marker == "writer.lock" else f"checkpoints {marker}"
    assert message == (
        f"--out {store / 'new'} is inside {store}, a checkpoints folder (it holds {held} directly): a run there "
        f"would put its files among those checkpoints. Pass a folder outside it, and --resume {store}/step_N to "
        "start from one of them"
    )
    assert listing(store) == [marker]


def test_runs_in_a_store_of_runs_and_a_nested_run_already_there_are_accepted(tmp_path):
    """A folder holding runs is no run folder: --out runs/new is taken. A run already nested goes on."""
    runs = tmp_path / "runs"
    run_folder(runs / "a")
    lock = run_lock.acquire(runs / "new")
    lock.release()
    assert listing(runs) == ["a", "new"]
    nested = run_folder(runs / "a" / "sub")
    lock = run_lock.acquire(nested)
    lock.release()
    assert (nested / "train.lock").read_text() == ""


def test_out_on_a_file_is_refused_and_the_file_kept(tmp_path):
    """Fault: 'is not writable (File exists)', naming neither the file nor the fix."""
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    assert refusal(out) == (
        f"--out {out} is a file, not a folder: --out is the run folder, where the trainer writes its checkpoints, "
        f"logs and config. Pass a folder (a new one: --out {out}.run)"
    )
    assert out.read_text() == "mine"


def test_out_below_a_file_is_refused_naming_the_file_and_nothing_created(tmp_path):
    """--out notes.txt/run/x: the folders --out needs cannot be made; the message names the file in the way."""
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "made").mkdir()
    out = tmp_path / "notes.txt" / "run" / "x"
    assert refusal(out) == (
        f"--out {out} is below {tmp_path / 'notes.txt'}, which is a file, not a folder. Move that file away, or "
        "choose another --out"
    )
    assert listing(tmp_path) == ["made", "notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_out_on_a_link_to_nothing_is_refused_and_nothing_created(tmp_path):
    """Fault: 'is not writable (File exists)' for a link whose storage is not mounted."""
    out = tmp_path / "run"
    out.symlink_to(tmp_path / "scratch" / "run")
    assert refusal(out) == (
        f"--out {out} is a symbolic link to {tmp_path / 'scratch' / 'run'}, which does not exist (storage not "
        "mounted on this node, or removed): the run folder is created there. Create that folder, or pass another --out"
    )
    assert listing(tmp_path) == ["run"]


def test_out_on_the_filesystem_root_is_refused():
    """Asked of check_out_folder, which writes nothing: acquire on the old code had created /train.lock."""
    with pytest.raises(NgptConfigError) as err:
        out_folder.check_out_folder(Path("/"))
    assert str(err.value).startswith("--out / is the root of the filesystem: --out is the run folder")


def test_out_on_the_home_folder_is_refused_and_a_run_below_it_accepted(tmp_path, monkeypatch):
    """`--out ~`, or `--out "$HOME/$NAME"` with NAME unset."""
    home = tmp_path.resolve() / "home"
    home.mkdir()
    (home / "notes").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    assert refusal(home) == (
        f"--out {home} is your home folder: --out is the run folder, where a run writes its config.yaml, logs and "
        f"checkpoints/ among what is there. Pass a folder for this run (--out {home}/runs/<name>); an empty shell "
        'variable in --out "$DIR/$NAME" leaves its parent'
    )
    assert listing(home) == ["notes"]
    lock = run_lock.acquire(home / "runs" / "x")
    lock.release()


def test_out_dot_at_the_top_of_a_git_repository_is_refused(tmp_path, monkeypatch):
    repo = tmp_path.resolve() / "repo"
    (repo / ".git").mkdir(parents=True)
    monkeypatch.chdir(repo)
    message = refusal(Path("."))
    assert message.startswith("--out . is the top of a git repository (its .git is there): ")
    assert listing(repo) == [".git"]
    lock = run_lock.acquire(Path("runs/x"))  # the default --out, runs/<config name>, is taken
    lock.release()


def test_stale_lock_of_a_dead_process_on_another_node_is_taken_over(tmp_path):
    """Slurm requeued the job on another node: train.lock still names the first node's process, whose lock the
    kernel dropped. The run takes it over with one line, and the file names this process."""
    out = run_folder(tmp_path / "run")
    (out / "train.lock").write_text("host=node-that-died pid=4242\n")
    lock = run_lock.acquire(out)
    try:
        assert lock.note == (
            "took over the stale lock of host=node-that-died pid=4242 (its lock was released; it ended without "
            "releasing it)"
        )
        assert os.pread(lock.fd, 4096, 0).decode() == f"host={HOST} pid={os.getpid()}\n"
    finally:
        lock.release()
