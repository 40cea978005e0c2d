"""bench/gpu_check.sh is not run in CI (it needs a GPU); here only its contract without one.

`bash bench/gpu_check.sh --dry-run` runs its checks on CPU at toy sizes (under two minutes) and
is the way to test the script itself; it is left out of the suite to keep CI short.
"""

from conftest import REPO, cpu_env, run


def test_without_a_gpu_it_says_so_and_exits_3():
    proc = run(["bash", REPO / "bench/gpu_check.sh"], env=cpu_env(CUDA_VISIBLE_DEVICES=""), check=False)
    assert proc.returncode == 3
    assert proc.stderr.splitlines()[0] == (
        "gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False): nothing was checked."
    )
    assert proc.stdout == ""


def test_bad_usage_exits_2():
    proc = run(["bash", REPO / "bench/gpu_check.sh", "--bogus"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown option --bogus (see --help)"
