"""launch/slurm/prepare.sbatch on the local Slurm cluster (tests/system/slurm_cluster.sh): a 2-task
job array tokenizes one part per task, and the merge job that task 0 submits (afterok) writes
a dataset equal token for token to a single-process preparation."""

import re
import time

from system.harness import slurm_available, slurm_cluster
from test_data_parts import assert_same_tokens, config, write_corpus

from ngpt_ds.data.prepare import prepare_dataset

from conftest import REPO, cpu_env, require_system

JOB_TIMEOUT = 300


def test_array_of_two_parts_then_merge_equals_single_process(tmp_path, tiny_dataset):
    ok, reason = slurm_available()
    require_system(ok, reason)
    corpus = write_corpus(tmp_path)
    tokenizer = tiny_dataset / "tokenizer.model"
    reference = prepare_dataset(config(corpus, tmp_path / "single", tokenizer))
    out = tmp_path / "parts"
    logs = tmp_path / "logs"
    logs.mkdir()
    with slurm_cluster() as slurm:
        job = slurm.submit(
            REPO / "launch/slurm/prepare.sbatch",
            "--input",
            corpus,
            "--tokenizer",
            tokenizer,
            "--out",
            out,
            "--val-fraction",
            0.1,
            "--shard-tokens",
            3000,
            "--shard-block-docs",
            40,
            "--no-progress",
            sbatch_args=["--array=0-1", f"--output={logs}/part-%a.out"],
            env=cpu_env(MERGE_OUTPUT=logs / "merge.out"),
            cwd=REPO,
        )
        deadline = time.monotonic() + JOB_TIMEOUT
        merge = None
        while merge is None and time.monotonic() < deadline:
            text = (logs / "part-0.out").read_text() if (logs / "part-0.out").exists() else ""
            merge = next(iter(re.findall(r"merge job (\d+) runs after array job " + job, text)), None)
            time.sleep(0.5)
        assert merge is not None, f"no merge job in task 0's log:\n{text}"
        info = slurm.wait(merge, JOB_TIMEOUT)
        tasks = [slurm.job(f"{job}_{k}") for k in range(2)]
    merge_log = (logs / "merge.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, merge_log)
    assert [t["JobState"] for t in tasks] == ["COMPLETED", "COMPLETED"], tasks
    for k in range(2):
        assert f"part {k} of 2 on" in (logs / f"part-{k}.out").read_text()
    assert "merged 2 parts" in merge_log or (out / "meta.json").is_file()
    assert_same_tokens(out, reference)
