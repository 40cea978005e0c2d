"""Ranks hash a checkpoint together, when saving and before resuming (faults: every rank hashed every
file of the checkpoint on resume, so 64 ranks read a 14 GB checkpoint 64 times, and rank 0 alone hashed
each new one while the others waited; an --out on a node-local disk let one node resume while another
started fresh; a rank that could not list the folder left the others with a gloo error; an unreadable
file or a crafted manifest entry ended resume in a traceback, or read a file outside the checkpoint
folder, and a malformed one crashed the next save).
"""

import errno
import json
import os
import re

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.train import manifest
from ngpt_ds.train.checkpoint import COMPLETE, is_converted_from, universal_name
from ngpt_ds.train.manifest import build_manifest, digest_share, verify, write_manifest
from ngpt_ds.train.resume import resolve_resume

from conftest import REPO, tiny_ngpt, tiny_train, torchrun, train_cmd, write_ds_config, write_yaml

WORKER = REPO / "tests" / "workers" / "verify_worker.py"
SAVE_WORKER = REPO / "tests" / "workers" / "checkpoint_save_worker.py"
SIZES = {  # the files of a 2-rank ZeRO 2 checkpoint, scaled down
    "mp_rank_00_model_states.pt": 6000,
    "zero_pp_rank_0_mp_rank_00_optim_states.pt": 4000,
    "zero_pp_rank_1_mp_rank_00_optim_states.pt": 4000,
    "config.yaml": 100,
}


def fake_checkpoint(folder, step, seed=0):
    folder.mkdir(parents=True)
    for i, (name, size) in enumerate(SIZES.items()):
        (folder / name).write_bytes(bytes((seed + i + k) % 251 for k in range(size)))
    write_manifest(folder, build_manifest(folder, step))
    return folder


def flip_a_byte(file):
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the digest can tell
    file.write_bytes(bytes(data))


def files_of(folder):
    """The manifest's files: relative path -> size."""
    return {name: entry["size"] for name, entry in json.loads((folder / COMPLETE).read_text())["files"].items()}


def choose_on_two_ranks(tmp_path, run_dir, resume, *extra):
    out_json = tmp_path / "ranks.json"
    torchrun(WORKER, out_json, run_dir, resume, *extra)
    return json.loads(out_json.read_text())


def test_digest_share_gives_each_file_to_exactly_one_rank_and_balances_the_bytes():
    sizes = [7_000, 5_000, 5_000, 3_000, 900, 800, 100, 40, 40, 0]
    files = {f"f{i}.pt": size for i, size in enumerate(sizes)}
    for world in (1, 2, 3, 4, 16):
        shares = [digest_share(files, rank, world) for rank in range(world)]
        assert sorted(name for share in shares for name in share) == sorted(files)
        loads = [sum(files[n] for n in share) for share in shares]
        # Largest first onto the least-loaded rank: no rank exceeds the mean by more than one file.
        assert max(loads) <= sum(sizes) / world + max(sizes)
        assert shares == [digest_share(dict(reversed(files.items())), rank, world) for rank in range(world)]
    assert [sum(files[n] for n in digest_share(files, r, 2)) for r in range(2)] == [10_940, 10_940]


def test_two_ranks_hash_a_new_checkpoint_together_each_file_once(tmp_path):
    # Before: rank 0 alone hashed every file of each new checkpoint (14.4 GB per save for ngpt_1b) while
    # the other ranks waited in the next collective.
    out = tmp_path / "run"
    torchrun(SAVE_WORKER, out, 4, "A", 0, "--record", tmp_path / "hashed")
    step = out / "checkpoints" / "step_00000004"
    assert verify(step) is None and (out / "checkpoints" / "latest").read_text() == "step_00000004"
    files = files_of(step)
    assert files == {
        "config.yaml": len("model: {}\n"),
        "mp_rank_00_model_states.pt": 1000,
        "zero_pp_rank_0_mp_rank_00_optim_states.pt": 3000,
        "zero_pp_rank_1_mp_rank_00_optim_states.pt": 3000,
    }
    for rank in (0, 1):
        hashed = json.loads((tmp_path / f"hashed.rank{rank}").read_text())
        assert sorted(hashed) == [
            str(tmp_path / "run" / "checkpoints" / "step_00000004.tmp-save" / n) for n in digest_share(files, rank, 2)
        ]
        assert hashed
    digests = json.loads((step / COMPLETE).read_text())["files"]
    for name in files:
        assert digests[name]["blake2b"] == manifest._digest(step / name)


def test_a_read_error_while_hashing_a_new_checkpoint_stops_the_save_on_every_rank(tmp_path):
    out = tmp_path / "run"
    proc = torchrun(SAVE_WORKER, out, 4, "A", 0, "--unreadable-on-rank-1")
    tmp = out / "checkpoints" / "step_00000004.tmp-save"
    unreadable = (
        tmp
        / digest_share(
            {
                "mp_rank_00_model_states.pt": 1000,
                "zero_pp_rank_0_mp_rank_00_optim_states.pt": 3000,
                "zero_pp_rank_1_mp_rank_00_optim_states.pt": 3000,
                "config.yaml": 10,
            },
            1,
            2,
        )[0]
    )
    message = f"checkpoint of step 4 not saved: rank 1: hashing {tmp}: Input/output error ({unreadable})"
    assert sorted(line for line in proc.stdout.splitlines() if " got: " in line) == [
        f"rank 0 got: {message}",
        f"rank 1 got: {message}",
    ]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == []  # nothing under step_4, no leftovers


def fake_conversion(checkpoints):
    """A step-4 checkpoint and what DeepSpeed's ds_to_universal leaves for it in a work folder."""
    source = fake_checkpoint(checkpoints / "step_00000004", 4)
    converted = checkpoints / "work" / "converted"
    for i, name in enumerate(("embed", "lm_head", "blocks.0.attn", "blocks.0.mlp", "blocks.1.attn")):
        (converted / "zero" / name).mkdir(parents=True)
        for j, state in enumerate(("fp32.pt", "exp_avg.pt", "exp_avg_sq.pt")):
            (converted / "zero" / name / state).write_bytes(bytes([i, j]) * (100 * (i + 1)))
    (converted.parent / "latest_universal").write_text("converted")
    return source, converted, checkpoints / universal_name(source.name)


def test_two_ranks_hash_a_finished_universal_conversion_together_each_file_once(tmp_path):
    # Before: rank 0 alone hashed the converted files (about 12 bytes per parameter) while the others waited.
    source, converted, target = fake_conversion(tmp_path / "run" / "checkpoints")
    originals = {p.relative_to(converted).as_posix(): p.read_bytes() for p in converted.rglob("*.pt")}
    proc = torchrun(
        SAVE_WORKER,
        tmp_path / "unused",
        0,
        "A",
        0,
        "--record",
        tmp_path / "hashed",
        "--finish-universal",
        converted,
        target,
        source,
    )
    assert sorted(line for line in proc.stdout.splitlines() if " got: " in line) == [
        "rank 0 got: placed",
        "rank 1 got: placed",
    ]
    assert verify(target) is None and is_converted_from(target, source)
    assert not converted.exists() and not (converted.parent / "latest_universal").exists()
    assert (target / "config.yaml").read_bytes() == (source / "config.yaml").read_bytes()
    files = files_of(target)
    assert sorted(files) == sorted([*originals, "config.yaml"])
    for name, data in originals.items():
        assert (target / name).read_bytes() == data
    for rank in (0, 1):
        hashed = json.loads((tmp_path / f"hashed.rank{rank}").read_text())
        assert hashed and sorted(hashed) == sorted(str(converted / n) for n in digest_share(files, rank, 2))


def test_a_read_error_while_hashing_a_conversion_stops_every_rank_and_places_nothing(tmp_path):
    source, converted, target = fake_conversion(tmp_path / "run" / "checkpoints")
    sizes = {p.relative_to(converted).as_posix(): p.stat().st_size for p in converted.rglob("*.pt")}
    sizes["config.yaml"] = (source / "config.yaml").stat().st_size
    proc = torchrun(
        SAVE_WORKER,
        tmp_path / "unused",
        0,
        "A",
        0,
        "--unreadable-on-rank-1",
        "--finish-universal",
        converted,
        target,
        source,
    )
    unreadable = converted / digest_share(sizes, 1, 2)[0]
    message = f"rank 1: hashing {converted}: Input/output error ({unreadable})"
    assert sorted(line for line in proc.stdout.splitlines() if " got: " in line) == [
        f"rank 0 got: {message}",
        f"rank 1 got: {message}",
    ]
    assert not target.exists()


CONVERT_WORKER = REPO / "tests" / "workers" / "convert_worker.py"


def convert_on_two_ranks(tmp_path, source, target, stand_in):
    out_json = tmp_path / "ranks.json"
    torchrun(CONVERT_WORKER, out_json, source, target, stand_in, timeout=180)
    return json.loads(out_json.read_text())


def test_two_ranks_convert_seal_and_then_reuse_a_conversion(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    source = fake_checkpoint(checkpoints / "step_00000004", 4)
    target = checkpoints / universal_name(source.name)
    ranks = convert_on_two_ranks(tmp_path, source, target, "converts")
    assert [(r["reused"], r["error"]) for r in ranks] == [(False, None), (False, None)]
    assert verify(target) is None and is_converted_from(target, source)
    assert sorted(files_of(target)) == ["config.yaml", "zero/x/fp32.pt", "zero/y/fp32.pt", "zero/z/fp32.pt"]
    assert sorted(p.name for p in checkpoints.iterdir()) == [source.name, target.name]  # no work folder left
    ranks = convert_on_two_ranks(tmp_path, source, target, "exits-3")  # not started again: reused
    assert [(r["reused"], r["error"]) for r in ranks] == [(True, None), (True, None)]


def test_a_converter_that_fails_or_cannot_start_stops_every_rank_with_one_message(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    source = fake_checkpoint(checkpoints / "step_00000004", 4)
    target = checkpoints / universal_name(source.name)
    ranks = convert_on_two_ranks(tmp_path, source, target, "exits-3")
    failed = f"DeepSpeed's ds_to_universal could not convert {source} (exit 3): stand-in converter: no such layout. "
    # ... the free space where it wrote (a full disk had ended in 'basic_ios::clear: iostream error' alone)
    space = re.fullmatch(
        rf"([0-9,]+\.[0-9]) MiB are free on the filesystem of {re.escape(str(target.parent))} \(if it is full, free "
        r"space there and rerun\)\. ",
        ranks[0]["error"].removeprefix(failed).removesuffix("Resume at 2 data-parallel ranks instead"),
    )
    assert space is not None, ranks[0]["error"]
    assert [r["error"] for r in ranks] == [ranks[0]["error"]] * 2 and ranks[0]["error"].startswith(failed)
    assert sorted(p.name for p in checkpoints.iterdir()) == [source.name]

    # The fault: rank 0 could not make its work folder (here a file is in the way) and raised alone,
    # while rank 1 waited in the broadcast after it (old code: FileExistsError on rank 0 only).
    work = checkpoints / (target.name + ".tmp-save")
    work.write_text("in the way")
    ranks = convert_on_two_ranks(tmp_path, source, target, "converts")
    expected = f"could not start DeepSpeed's ds_to_universal in {work}: [Errno 17] File exists: '{work}'"
    assert [r["error"] for r in ranks] == [expected, expected]
    assert not target.exists()


def test_two_ranks_each_hash_their_share_and_agree_to_skip_damage_in_rank_1s_share(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    older = fake_checkpoint(checkpoints / "step_00000004", 4, seed=1)
    newest = fake_checkpoint(checkpoints / "step_00000008", 8, seed=2)
    damaged = newest / digest_share(files_of(newest), 1, 2)[0]
    flip_a_byte(damaged)
    problem = f"{damaged} does not match its blake2b-128 digest in the COMPLETE manifest (corrupted)"
    # The old code's answer on each rank: the same choice, after hashing every file itself.
    assert resolve_resume(tmp_path / "run", "auto", warn=lambda line: None) == older

    ranks = choose_on_two_ranks(tmp_path, tmp_path / "run", "auto")
    for r in ranks:
        assert r["error"] is None and r["chosen"] == str(older)
        assert r["warnings"] == [f"warning: skipping checkpoint step_00000008: {problem}. Using the one before it"]
    for folder in (newest, older):  # each file hashed once, by the rank digest_share names
        for rank in (0, 1):
            hashed = sorted(p for p in ranks[rank]["hashed"] if p.startswith(str(folder) + "/"))
            assert hashed == sorted(str(folder / n) for n in digest_share(files_of(folder), rank, 2))
    assert str(damaged) not in ranks[0]["hashed"]
    assert len(ranks[0]["hashed"]) + len(ranks[1]["hashed"]) == 2 * len(SIZES)

    ranks = choose_on_two_ranks(tmp_path, tmp_path / "run", str(newest))  # named: refused on both ranks
    expected = (
        f"--resume {newest}: the checkpoint is damaged: {problem}. Resume from another checkpoint (use "
        "--resume auto to take the newest intact one)"
    )
    assert [r["error"] for r in ranks] == [expected, expected]


def test_two_ranks_verify_an_earlier_universal_conversion_together_before_reusing_it(tmp_path):
    # Before: rank 0 alone hashed the whole conversion (about 12 bytes per parameter) while the others waited.
    from ngpt_ds.train.checkpoint import finish_universal

    source, converted, target = fake_conversion(tmp_path / "run" / "checkpoints")
    finish_universal(converted, target, source)
    files = files_of(target)

    ranks = choose_on_two_ranks(tmp_path, tmp_path / "run", "auto", "--universal", target, source)
    assert [r["chosen"] for r in ranks] == [True, True]
    for rank in (0, 1):
        assert sorted(ranks[rank]["hashed"]) == sorted(str(target / n) for n in digest_share(files, rank, 2))
    flip_a_byte(target / digest_share(files, 1, 2)[0])  # damaged in rank 1's share: converted again
    ranks = choose_on_two_ranks(tmp_path, tmp_path / "run", "auto", "--universal", target, source)
    assert [r["chosen"] for r in ranks] == [False, False]


def test_ranks_that_see_different_checkpoints_stop_together_before_reading_any(tmp_path):
    # Rank 0's --out holds checkpoints; rank 1's, on another node's local disk, holds none.
    fake_checkpoint(tmp_path / "run" / "rank0" / "checkpoints" / "step_00000004", 4)
    (tmp_path / "run" / "rank1").mkdir()
    # Old code: each rank chose alone, so rank 0 resumed step 4 while rank 1 started fresh.
    assert resolve_resume(tmp_path / "run" / "rank0", "auto").name == "step_00000004"
    assert resolve_resume(tmp_path / "run" / "rank1", "auto") is None

    ranks = choose_on_two_ranks(tmp_path, tmp_path / "run", "auto", "--own-run-dir")
    marker = manifest.marker_digest(tmp_path / "run" / "rank0" / "checkpoints" / "step_00000004")
    for rank, r in enumerate(ranks):
        assert r["chosen"] is None and r["hashed"] == []
        assert r["error"] == (
            f"ranks 0 and 1 see different checkpoints under --out {tmp_path / 'run' / f'rank{rank}'} "
            f"(rank 0: step_00000004 (manifest {marker[:8]}); rank 1: no complete checkpoint). Every rank must "
            "see the same files: put --out on storage that every node shares (not a node-local disk)"
        )


def test_a_checkpoint_appearing_while_the_ranks_choose_does_not_split_them(tmp_path):
    # Rank 1 lists one more folder after the ranks have compared what they see. Choosing from a new
    # listing (as the first version of this code did) made rank 1 verify it alone, one collective more
    # than rank 0: the verdicts paired with the wrong folders, and rank 1 chose the damaged step 8 while
    # rank 0 chose step 4.
    checkpoints = tmp_path / "run" / "checkpoints"
    older = fake_checkpoint(checkpoints / "step_00000004", 4, seed=1)
    fake_checkpoint(checkpoints / "step_00000008", 8, seed=2)
    flip_a_byte(checkpoints / "step_00000008" / "config.yaml")
    ranks = choose_on_two_ranks(tmp_path, tmp_path / "run", "auto", "--late-checkpoint-on-rank-1")
    assert [(r["chosen"], r["error"]) for r in ranks] == [(str(older), None), (str(older), None)]
    assert ranks[0]["warnings"] == ranks[1]["warnings"] and len(ranks[0]["warnings"]) == 1


def test_a_rank_whose_shared_storage_lists_a_new_checkpoint_late_waits_for_it_instead_of_stopping_every_rank(
    tmp_path,
):
    """Fault: one listing decided. A network file system may list a folder renamed on another node late
    (NFS caches directory attributes for up to a minute): a step saved by the job before, or put back by
    rank 0 just now, was missing on rank 1 for a moment, and every rank stopped with 'ranks see different
    checkpoints'. The ranks now list again after short pauses while they disagree."""
    checkpoints = tmp_path / "run" / "checkpoints"
    fake_checkpoint(checkpoints / "step_00000004", 4, seed=1)
    newest = fake_checkpoint(checkpoints / "step_00000008", 8, seed=2)
    ranks = choose_on_two_ranks(
        tmp_path, tmp_path / "run", "auto", "--listing-lags-on-rank-1", "--settle-pauses", "0.1,0.1"
    )
    assert [(r["chosen"], r["error"]) for r in ranks] == [(str(newest), None), (str(newest), None)]
    assert (
        ranks[0]["warnings"]
        == ranks[1]["warnings"]
        == [
            f"warning: ranks 0 and 1 see different checkpoints under --out {tmp_path / 'run'}; listing again for up "
            "to 0.2 s, in case shared storage lists new files late"
        ]
    )
    # One pause is not enough for this lag: the same error as before, after listing twice.
    ranks = choose_on_two_ranks(
        tmp_path, tmp_path / "run", "auto", "--listing-lags-on-rank-1", "--settle-pauses", "0.1"
    )
    assert [r["chosen"] for r in ranks] == [None, None]
    assert all(r["error"].startswith("ranks 0 and 1 see different checkpoints") for r in ranks)


def test_a_rank_that_cannot_list_the_checkpoints_stops_every_rank_instead_of_leaving_them_waiting(tmp_path):
    # Before: rank 1 ended with a PermissionError traceback, and rank 0, waiting in the collective, with
    # gloo's "Connection closed by peer" traceback that does not name the cause.
    fake_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000004", 4)
    ranks = choose_on_two_ranks(tmp_path, tmp_path / "run", "auto", "--unlistable-on-rank-1")
    marker = manifest.marker_digest(tmp_path / "run" / "checkpoints" / "step_00000004")
    expected = (
        f"ranks 0 and 1 see different checkpoints under --out {tmp_path / 'run'} (rank 0: step_00000004 "
        f"(manifest {marker[:8]}); rank 1: error: --resume auto: cannot list {tmp_path / 'run' / 'checkpoints'} "
        "(Permission denied)). Every rank must see the same files: put --out on storage that every node shares "
        "(not a node-local disk)"
    )
    assert [r["error"] for r in ranks] == [expected, expected]
    assert [r["hashed"] for r in ranks] == [[], []]


def test_an_unreadable_file_is_a_verdict_not_a_traceback(tmp_path, monkeypatch):
    folder = fake_checkpoint(tmp_path / "step_00000004", 4)
    unreadable = folder / "config.yaml"
    digest = manifest._digest

    def failing_digest(path):
        if path == unreadable:
            raise OSError(errno.EIO, "Input/output error", str(path))
        return digest(path)

    monkeypatch.setattr(manifest, "_digest", failing_digest)
    # Old code: the OSError left verify(), and resume, with a traceback.
    assert verify(folder) == f"{unreadable} could not be read (Input/output error)"
    assert verify(folder, rank=1, world=2) is None  # rank 1's share holds only the other files
    assert verify(folder, rank=0, world=2) == f"{unreadable} could not be read (Input/output error)"


@pytest.mark.parametrize(
    "name, entry",
    [
        ("../outside.pt", "matching"),  # old code: hashed the file beside the folder, and passed
        ("/etc/hostname", "matching"),
        ("config.yaml", 100),  # old code: TypeError
        ("config.yaml", {"size": "100", "blake2b": "0"}),
    ],
)
def test_a_crafted_manifest_entry_is_refused_and_nothing_outside_the_folder_is_read(tmp_path, name, entry):
    folder = fake_checkpoint(tmp_path / "step_00000004", 4)
    assert manifest.checkpoint_bytes(folder) == sum(SIZES.values())
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"o" * 10)
    found = build_manifest(folder, 4)
    if entry == "matching":
        target = folder / name
        entry = {"size": target.stat().st_size, "blake2b": manifest._digest(target)}
    found["files"][name] = entry
    write_manifest(folder, found)
    assert verify(folder) == f"{folder / COMPLETE}: malformed manifest entry {name!r}"
    # The next save's free-space estimate falls back to bytes per parameter (old code: a TypeError on
    # rank 0 before the save, while the other ranks waited for it).
    assert manifest.checkpoint_bytes(folder) is None


def plant(folder, kind):
    """Put an entry that is not a regular file into `folder`, under a name DeepSpeed opens; returns it."""
    path = folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    path.unlink()
    if kind == "named pipe":
        os.mkfifo(path)
    elif kind == "link to a device":
        path.symlink_to("/dev/zero")
    else:
        path.symlink_to(folder / "nothing-here")
    return path


@pytest.mark.parametrize("kind", ["named pipe", "link to a device", "link to nothing"])
@pytest.mark.parametrize("marker", ["manifest", "legacy"])
def test_a_checkpoint_holding_a_pipe_or_a_device_is_refused_before_anything_opens_it(tmp_path, kind, marker):
    """The fault: a named pipe in a shared checkpoint (tar keeps them) under a file name DeepSpeed opens.
    The old verify passed: its listing skipped what is not a regular file, and a plain-text (legacy)
    COMPLETE is not checked at all. The allow-list check then opened the pipe and blocked for good
    (reproduced: safe_load.check still waiting after 5 s); with 2 ranks the other rank would wait in
    its all-reduce until the process group timed out. A link to /dev/zero would be read without end."""
    checkpoints = tmp_path / "run" / "checkpoints"
    older = fake_checkpoint(checkpoints / "step_00000004", 4)
    newest = fake_checkpoint(checkpoints / "step_00000008", 8)
    planted = plant(newest, kind)
    if marker == "manifest":  # a manifest true to every regular file: the old listing left the entry out
        write_manifest(newest, build_manifest(newest, 8))
    else:
        (newest / COMPLETE).write_text("step 8\n")  # what an older ngpt_ds wrote: nothing to check against
    described = {
        "named pipe": f"{planted} is a named pipe, not a regular file",
        "link to a device": f"{planted} is a device, not a regular file",
        "link to nothing": f"{planted} is a link to nothing",
    }[kind]
    problem = f"{described}; a checkpoint holds only folders and regular files"
    assert verify(newest) == problem
    assert verify(newest, rank=1, world=2) == problem  # every rank checks the listing whole
    warnings = []
    assert resolve_resume(tmp_path / "run", "auto", warn=warnings.append) == older
    assert warnings == [f"warning: skipping checkpoint step_00000008: {problem}. Using the one before it"]
    with pytest.raises(NgptConfigError, match=re.escape(f"the checkpoint is damaged: {problem}")):
        resolve_resume(tmp_path / "run", str(newest))


MODEL = tiny_ngpt()


def test_a_two_rank_run_resumes_past_damage_that_only_rank_1_hashes(tmp_path, tiny_dataset):
    config = write_yaml(tmp_path / "tiny.yaml", MODEL, tiny_train(4, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    out = tmp_path / "run"
    torchrun(*train_cmd(config, ds, tiny_dataset, out))
    checkpoints = out / "checkpoints"
    newest, older = checkpoints / "step_00000004", checkpoints / "step_00000002"
    damaged = newest / digest_share(files_of(newest), 1, 2)[0]
    flip_a_byte(damaged)

    resumed = torchrun(*train_cmd(config, ds, tiny_dataset, out, "--max-steps", 6))
    warnings = [line for line in resumed.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: skipping checkpoint step_00000004: {damaged} does not match its blake2b-128 digest in the "
        "COMPLETE manifest (corrupted). Using the one before it"
    ]
    assert f"resumed from {older} at step 2" in resumed.stdout
    assert (checkpoints / "latest").read_text() == "step_00000006"

    # Already trained to step 6: both ranks agree there is nothing to do, and exit 0.
    again = torchrun(*train_cmd(config, ds, tiny_dataset, out, "--max-steps", 6))
    assert "already trained to step 6/6: nothing to do" in again.stdout + again.stderr
