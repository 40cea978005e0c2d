"""bench/gpu_check.sh's --workdir: where an operator points it (a used folder, a relative path)."""

from conftest import REPO, cpu_env, run


def test_a_workdir_that_holds_files_is_refused_before_anything_runs(tmp_path):
    """Fault: --workdir DIR of an earlier check, or any folder with a prepared dataset in DIR/data, was
    used as it was: prepare_data ran with --overwrite on DIR/data (someone's dataset there was replaced by
    the check's pydoc corpus), and the trainer checks resumed the earlier check's DIR/runs, already at
    max_steps ("nothing to do", exit 0): PASS without a step trained."""
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "meta.json").write_text('{"format": "ngpt_ds-token-shards", "vocab_size": 300}\n')
    proc = run(["bash", REPO / "bench/gpu_check.sh", "--dry-run", "--workdir", work], env=cpu_env(), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: --workdir {work} is not a new or empty folder; the checks replace data/, runs/ and export/ "
        "in it and would resume an earlier check's runs. Pass a new folder (or none: a temporary one)"
    )
    assert proc.stdout == ""
    assert sorted(p.name for p in work.rglob("*")) == ["data", "meta.json"]
    assert (work / "data" / "meta.json").read_text() == '{"format": "ngpt_ds-token-shards", "vocab_size": 300}\n'


def test_a_relative_workdir_is_the_callers(tmp_path):
    """Fault: the script moves to the repository before it reads --workdir, so `--workdir checks` run from
    another folder wrote REPO/checks, and the summary's "logs in checks" pointed at a folder the caller
    did not have. A budget of 0 s skips every check; only the summary is written."""
    caller = tmp_path / "caller"
    caller.mkdir()
    proc = run(
        ["bash", REPO / "bench/gpu_check.sh", "--dry-run", "--workdir", "checks"],
        cwd=caller,
        env=cpu_env(GPU_CHECK_BUDGET_S="0"),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (REPO / "checks").exists()
    summary = (caller / "checks" / "summary.txt").read_text().splitlines()
    assert [line.split()[:2] for line in summary[1:]] == [
        ["SKIPPED", name]
        for name in (
            "prepare_data",
            "hook_zero2_nccl",
            "hook_zero2_offload_nccl",
            "hook_zero3_bf16",
            "trainer_zero2",
            "export_on_sphere",
            "throughput_0.5b_short",
            "flash_sdpa",
            "trainer_compile_zero2",
        )
    ]
    assert f"logs in {caller / 'checks'}):" in proc.stdout


def test_workdir_without_a_folder_is_bad_usage():
    """Fault: `--workdir` as the last argument exited 1 with bash's "line 35: 2: --workdir needs a folder",
    where the header promises exit 2 for bad usage."""
    proc = run(["bash", REPO / "bench/gpu_check.sh", "--workdir"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --workdir needs a folder (see --help)"


def test_a_python_without_torch_is_named_not_taken_for_no_gpu(tmp_path):
    """Fault: run where PYTHON has no torch (the venv launch/setup.sh installed into not activated, on the
    GPU machine), the script said "no CUDA GPU is visible (torch.cuda.is_available() is False)", exit 3:
    the GPU was never asked about."""
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    python.chmod(0o755)
    proc = run(["bash", REPO / "bench/gpu_check.sh"], env=cpu_env(PYTHON=python), check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"gpu_check: {python} cannot import torch (ModuleNotFoundError: No module named 'torch'): nothing was checked.",
        "gpu_check: activate the environment launch/setup.sh installed into, or set PYTHON to its python.",
    ]
    assert proc.stdout == ""
