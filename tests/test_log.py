"""ngpt_ds.log: rank 0 logs by default, other ranks only errors; --log-all-ranks prefixes every line
with its rank; INFO goes to the stream the command chose, warnings and errors to stderr."""

import sys

import pytest

from conftest import cpu_env, run

SNIPPET = """
import sys
from ngpt_ds import log
log.setup(sys.argv[1], all_ranks=sys.argv[2] == "all", info_stream=sys.argv[3])
logger = log.get("ngpt_ds.train.loop")
logger.debug("a debug line")
logger.info("an info line")
logger.warning("a warning line")
logger.error("an error line")
"""


def emit(rank: int, level: str = "INFO", ranks: str = "zero", info_stream: str = "stdout"):
    proc = run([sys.executable, "-c", SNIPPET, level, ranks, info_stream], env=cpu_env(RANK=rank))
    return proc.stdout.splitlines(), proc.stderr.splitlines()


def test_rank0_logs_at_the_level_and_other_ranks_only_errors():
    assert emit(0) == (["an info line"], ["a warning line", "an error line"])
    assert emit(1) == ([], ["an error line"])
    assert emit(0, level="WARNING") == ([], ["a warning line", "an error line"])
    assert emit(0, level="DEBUG", info_stream="stderr") == (
        [],
        ["a debug line", "an info line", "a warning line", "an error line"],
    )


@pytest.mark.parametrize("rank", [0, 3])
def test_all_ranks_prefix_every_line_with_the_rank(rank):
    out, err = emit(rank, ranks="all")
    assert out == [f"[rank {rank}] an info line"]
    assert err == [f"[rank {rank}] a warning line", f"[rank {rank}] an error line"]


def test_bad_input_is_one_error_line_and_exit_2(tmp_path):
    """ngpt_ds.cli.run, shared by every command: NgptConfigError -> `error: ...`, exit 2, no traceback."""
    proc = run(
        [sys.executable, "-m", "ngpt_ds.cli.generate", str(tmp_path / "missing"), "--prompt", "x", "--device", "cpu"],
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_an_error_line_is_one_write_so_ranks_sharing_a_pipe_do_not_merge_lines(tmp_path):
    """The launchers start ranks with `python -u`: unbuffered, print's text and its newline were two
    writes to the pipe every rank shares, and two ranks' refusals came out as one line ("...Do not
    use iterror: ..."; seen in a 2-rank test of a poisoned checkpoint). Traced here as write calls on
    an unbuffered stderr: 2 before, 1 now."""
    snippet = (
        "import sys\n"
        "from ngpt_ds.cli import run\n"
        "from ngpt_ds.errors import NgptConfigError\n"
        "writes = []\n"
        "real = sys.stderr.write\n"
        "sys.stderr.write = lambda text: writes.append(text) or real(text)\n"
        "def body():\n"
        "    raise NgptConfigError('the checkpoint was refused')\n"
        "status = run(body, accelerator=False)\n"
        "sys.stdout.write(repr((status, [w for w in writes if 'refused' in w or w == '\\\\n'])))\n"
    )
    proc = run([sys.executable, "-u", "-c", snippet], check=False)
    assert proc.stdout == repr((2, ["error: the checkpoint was refused\n"])), proc.stderr
