"""The benchmark scripts' command lines: required inputs named, nothing written where it was not asked for.

Each test runs the script as an operator would and checks the exit status, the one error line and the files
left behind; none measures time."""

import sys

import pytest

from conftest import REPO, run

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


@pytest.mark.parametrize("module", ["engines", "report", "rss_step"])
def test_bench_modules_say_they_are_no_command(tmp_path, module):
    """`python bench/engines.py --help` (and report, rss_step) printed nothing and exited 0, as if it had run."""
    proc = run([sys.executable, REPO / "bench" / f"{module}.py", "--help"], cwd=tmp_path)
    assert "not a command" in proc.stdout and proc.stdout.splitlines()[0].strip()
    wrong = run([sys.executable, REPO / "bench" / f"{module}.py", "--steps", "3"], cwd=tmp_path, check=False)
    assert wrong.returncode == 2 and "error: no options here (got: --steps 3)" in wrong.stderr
    assert list(tmp_path.iterdir()) == []
