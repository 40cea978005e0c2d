"""Every test script that joins a process group and runs as __main__ ends through ngpt_ds.distributed.exit_process.

Fault (review of c17171f): c17171f moved seven rank scripts written inside tests/test_*.py to exit_process after CI
run 101 saw a finished rank abort in the interpreter's teardown ('terminate called without an active exception',
exit -6: a gloo worker thread, exit_process's docstring). Seven more scripts that train under DeepSpeed and whose exit
status their tests check still ended in the teardown: tests/test_infer_export.py's torchrun worker (the module fixture
every test_infer_* file reads) and six of tests/workers/ (frozen_sphere_worker, offload_states_worker,
hf_deepspeed_initialize_worker, hf_fine_tune_after_engine_worker, hf_fine_tune_after_trainer_worker,
hf_trainer_worker). The abort comes about once in 40 runs, so this test reads the scripts instead: one run as
__main__ (not by pytest) that joins a group must end through exit_process, os._exit, or a helper that calls it
(workers/common.run_worker, workers/hf_common.ended_through_exit_process). On the old code it fails listing those
seven."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
JOINS = (
    "init_process_group(",
    "deepspeed.initialize(",
    "init_distributed(",
    "start_engine(",
    "start_test_engine(",
    "run_cases(",
    "deepspeed_trainer(",
    "Trainer(",
)
"""Calls that join a process group: torch's and DeepSpeed's, and the test helpers and trainers that make them."""
ENDS = ("exit_process(", "os._exit(", "ended_through_exit_process(")


def _main_block(source: str) -> str | None:
    """The source of the module's `if __name__ == "__main__":` block, or None."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("__name__ == '__main__'", "'__main__' == __name__"):
            return ast.get_source_segment(source, node)
    return None


def _scripts() -> dict[str, tuple[bool, bool]]:
    """Each script with a __main__ block that is not pytest's: (whether it joins a group, whether it ends through
    exit_process)."""
    found = {}
    for path in sorted([*TESTS.glob("test_*.py"), *(TESTS / "workers").glob("*.py")]):
        source = path.read_text(encoding="utf-8")
        main = _main_block(source)
        if main is None or "pytest.main" in main:
            continue
        joins = any(call in source for call in JOINS)
        ends = any(call in main for call in ENDS) or "run_worker(" in source
        found[path.relative_to(TESTS.parent).as_posix()] = (joins, ends)
    return found


def test_rank_scripts_that_join_a_group_end_through_exit_process():
    scripts = _scripts()
    joining = {name for name, (joins, _) in scripts.items() if joins}
    # The reading finds the scripts it is about (it would pass on nothing if a marker stopped matching).
    assert {"tests/workers/tp_worker.py", "tests/workers/hf_trainer_worker.py", "tests/test_infer_export.py"} <= joining
    assert len(joining) >= 20, sorted(joining)
    teardown = sorted(name for name in joining if not scripts[name][1])
    assert teardown == [], f"these end in the interpreter's teardown, not through exit_process: {teardown}"
