"""tests/forked_cli.py runs a script as a fresh `python script args` would: same argv, working folder,
environment, output, exit status, traceback and atexit handlers; a timeout kills it."""

import subprocess
import sys

import pytest
from forked_cli import run_forked, run_forked_ranks

from conftest import cpu_env

SCRIPT = """
import atexit, os, sys
atexit.register(lambda: print("atexit ran", flush=True))
print("argv", sys.argv[1:], "cwd", os.getcwd(), "env", os.environ.get("FORKED_CLI_PROBE"), "path0", sys.path[0])
print("to stderr", file=sys.stderr)
if sys.argv[1] == "raise":
    raise ValueError("boom")
if sys.argv[1] == "sleep":
    import time
    time.sleep(60)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("first", ["0", "3", "raise"])
def test_a_forked_script_gives_what_a_fresh_interpreter_gives(tmp_path, first):
    script = tmp_path / "bin" / "probe.py"
    script.parent.mkdir()
    script.write_text(SCRIPT)
    env = cpu_env(FORKED_CLI_PROBE="yes")
    args = [first, "two words"]
    fresh = subprocess.run(
        [sys.executable, script, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    forked = run_forked(script, args, env=env, cwd=tmp_path, timeout=60)
    assert forked.returncode == fresh.returncode == {"0": 0, "3": 3, "raise": 1}[first]
    assert forked.stdout == fresh.stdout
    assert f"'two words'] cwd {tmp_path} env yes path0 {script.parent}" in forked.stdout
    assert forked.stdout.endswith("atexit ran\n")
    assert forked.stderr.startswith("to stderr\n")
    if first == "raise":
        assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1] == "ValueError: boom"
        assert "Traceback (most recent call last)" in forked.stderr
    else:
        assert forked.stderr == fresh.stderr


def test_a_forked_script_past_its_timeout_is_killed(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    with pytest.raises(subprocess.TimeoutExpired):
        run_forked(script, ["sleep"], env=cpu_env(), cwd=tmp_path, timeout=2)
    after = run_forked(script, ["5"], env=cpu_env(), cwd=tmp_path, timeout=60)  # the server still serves
    assert after.returncode == 5


def test_once_a_rank_fails_its_peer_gets_the_grace_then_is_killed(tmp_path):
    """As torchrun tears a job down: a rank left waiting for a dead peer must not hang the test."""
    failing = tmp_path / "failing.py"
    failing.write_text("import os, sys, time\nif os.environ['RANK'] == '0': sys.exit(3)\ntime.sleep(60)\n")
    ranks = run_forked_ranks(
        failing, [], [cpu_env(RANK=r) for r in range(2)], cwd=tmp_path, timeout=120, failed_grace_s=2
    )
    assert [rank.returncode for rank in ranks] == [3, -9]  # the peer would have slept 60 s and exited 0
