"""The benchmark scripts' command lines: required inputs named, nothing written where it was not asked for.

Each test runs the script as an operator would and checks the exit status, the one error line and the files
left behind; none measures time."""

import sys

import pytest

from conftest import REPO, cpu_env, run

WORKER = REPO / "bench/gpu_check_worker.py"


@pytest.mark.parametrize(
    ("check", "needs"), [("hook", "--workdir DIR"), ("sphere", "--model DIR"), ("compare", "--runs")]
)
def test_gpu_check_worker_names_the_input_its_check_needs(tmp_path, check, needs):
    """`gpu_check_worker.py hook` without --workdir wrote its checkpoint (checkpoint-zero2/, ~1 MiB) into the
    working directory, the repository's root when run as its docstring shows; sphere without --model and
    compare without --runs ended in a TypeError traceback. Now each is a usage error before anything runs."""
    work = tmp_path / "cwd"
    work.mkdir()
    proc = run([sys.executable, WORKER, check, "--steps", 1, "--result", tmp_path / "r"], cwd=work, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"gpu_check_worker.py: error: {check} needs {needs}"
    assert "Traceback" not in proc.stderr
    assert list(work.iterdir()) == [] and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("n_layer", "--shape 'n_layer': 'n_layer' is not key=value with a key of n_layer, n_embd, n_head, seq_len, "
         "vocab_size, batch"),
        ("layers=2", "--shape 'layers=2': 'layers=2' is not key=value with a key of n_layer, n_embd, n_head, "
         "seq_len, vocab_size, batch"),
        ("n_layer=two", "--shape 'n_layer=two': n_layer='two' is not an integer"),
        ("n_layer=1,batch=0", "--shape 'n_layer=1,batch=0': batch must be at least 1, got 0"),
    ],
)  # fmt: skip
def test_peer_step_shape_errors_name_the_option(tmp_path, shape, message):
    """A malformed --shape said 'error: not enough values to unpack (expected 2, got 1)', 'error: invalid literal
    for int() with base 10: ...' or 'error: unknown keys [...]', without naming the option; batch=0 passed and
    failed in the first step. --official names no file: the shape is read first."""
    proc = run(
        [sys.executable, REPO / "bench/peer_step.py", "--official", tmp_path / "absent", "--shape", shape],
        check=False,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == f"error: {message}"


@pytest.mark.parametrize("module", ["engines", "report", "children"])
def test_bench_modules_say_they_are_no_command(tmp_path, module):
    """`python bench/engines.py --help` (and report, children) printed nothing and exited 0, as if it had run.
    (bench/rss_step.py is a command too since input32: the memory check's figure against the peak RSS.)"""
    proc = run([sys.executable, REPO / "bench" / f"{module}.py", "--help"], cwd=tmp_path)
    assert "not a command" in proc.stdout and proc.stdout.splitlines()[0].strip()
    wrong = run([sys.executable, REPO / "bench" / f"{module}.py", "--steps", "3"], cwd=tmp_path, check=False)
    assert wrong.returncode == 2 and "error: no options here (got: --steps 3)" in wrong.stderr
    assert list(tmp_path.iterdir()) == []


def test_gpu_check_a_check_cut_short_by_the_budget_is_skipped_not_failed(tmp_path):
    """A check started with less of GPU_CHECK_BUDGET_S left than its own limit got that remainder as its limit;
    running out of it was 'FAIL timed out after 23 s' (the compile check of a --dry-run on a loaded machine),
    and --dry-run exited 1 though nothing had failed. It is SKIPPED now, naming the budget; a check that
    times out within its own limit still FAILs. PYTHON is a stand-in whose data preparation never ends; the
    21 s budget is the least with which the script starts a check (it skips below 20 s)."""
    shim = tmp_path / "python"
    shim.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  -c) echo 0; exit 0 ;;\n"  # no GPU: the --dry-run path
        "  launch/prepare_data.py) exec sleep 120 ;;\n"
        "esac\n"
        '[ "$1" = - ] && [ $# = 1 ] && { cat >/dev/null; echo "INFO     machine   stand-in"; exit 0; }\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    shim.chmod(0o755)
    env = cpu_env(PYTHON=shim, GPU_CHECK_BUDGET_S=21)
    cmd = ["bash", REPO / "bench/gpu_check.sh", "--dry-run", "--workdir", tmp_path / "work"]
    proc = run(cmd, env=env, check=False, timeout=120)
    summary = (tmp_path / "work/summary.txt").read_text().splitlines()
    prepare = next(line for line in summary if " prepare_data " in line)
    assert prepare.split()[0] == "SKIPPED" and "time budget spent after" in prepare and "GPU_CHECK_BUDGET_S" in prepare
    assert not any(line.startswith("FAIL") for line in summary), summary
    assert proc.returncode == 0, proc.stdout + proc.stderr
