"""The lines the trainer prints at the end of a run (ngpt_ds.train.summary.describe): what was trained, how the
logged losses moved, where everything is, what to run next; the numbers are metrics.jsonl's."""

import json
import math

from ngpt_ds.train.summary import Summary, describe


def write_run(out, records):
    out.mkdir()
    (out / "config.yaml").write_text(
        "config_source: /somewhere/ngpt_ds/model/presets/ngpt_tiny.yaml\nmodel:\n  arch: ngpt\n  n_layer: 4\n"
    )
    with open(out / "metrics.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
        f.write("{cut short\n")  # a line a kill left half written is skipped


def summary_of(out, status="finished", step=300, checkpoint="step_00000300", tokens=614400):
    return Summary(status, step, 300, tokens, 3.05, 3.5, 312.34, str(out / "checkpoints" / checkpoint), str(out))


def test_the_final_summary_names_the_run_the_losses_from_metrics_jsonl_and_what_to_run_next(tmp_path):
    """Fault: the run ended in one line, 'Done: step 300/300, 0.61M tokens in 5m12.3s | train loss 3.050 | ...':
    the train loss was the last step's alone, where the last log line and metrics.jsonl show the mean over the
    log interval (seen: 6.600 printed for step 12, 6.699 logged), no start value to compare, no metrics.jsonl,
    no model name, nothing to run next; and '0.61M tokens in 5m12s' put a resumed run's tokens since step 0
    over this session's minutes."""
    out = tmp_path / "run"
    write_run(
        out,
        [
            {"step": 10, "train/loss": 7.6832, "train/tokens": 20480.0},
            {"step": 50, "train/loss": 5.5, "eval/loss": 5.25},
            {"step": 300, "train/loss": 3.3, "eval/loss": 3.6},  # a stopped run's record, logged again below
            {"step": 300, "train/loss": 3.1234, "eval/loss": 3.4567, "eval/perplexity": 31.7},
            {"step": 310, "train/loss": 1.0},  # past the summary's step (an earlier, longer lineage): not shown
        ],
    )
    assert describe(summary_of(out)).splitlines() == [
        "Done: nGPT (ngpt_tiny.yaml) to step 300/300, 0.61M tokens in all (this session: 5m12.3s)",
        "  train loss:      7.683 at step 10 -> 3.123 at step 300",
        f"  validation loss: 5.250 at step 50 -> 3.457 at step 300 (perplexity {math.exp(3.4567):.1f})",
        f"  checkpoint:      {out}/checkpoints/step_00000300",
        f"  metrics:         {out}/metrics.jsonl",
        f"  dashboard:       tensorboard --logdir {out}/tensorboard",
        "next:",
        f'  python launch/generate.py {out} --prompt "And God said"',
        f"  python launch/evaluate.py {out}",
        f"  python launch/export.py {out} --out exports/run",
        "  the same command with --max-steps 600 trains further from step 300",
    ]


def test_a_stopped_run_says_how_to_resume_and_survives_missing_records(tmp_path):
    out = tmp_path / "run"
    out.mkdir()  # no config.yaml, no metrics.jsonl: the lines that need them are left out
    assert describe(summary_of(out, "stopped", 2, "step_00000002", tokens=4096)).splitlines() == [
        "Stopped: the model to step 2/300, 4.1k tokens in all (this session: 5m12.3s)",  # was 0.00M
        f"  checkpoint:      {out}/checkpoints/step_00000002",
        f"  metrics:         {out}/metrics.jsonl",
        f"  dashboard:       tensorboard --logdir {out}/tensorboard",
        "next: run the same command again to resume from the checkpoint, or",
        f'  python launch/generate.py {out} --prompt "And God said"',
        f"  python launch/evaluate.py {out}",
        f"  python launch/export.py {out} --out exports/run",
    ]


def test_the_commands_to_run_next_are_the_ones_the_user_has(tmp_path, monkeypatch):
    """Fault: every run ended with `python launch/generate.py RUN` and `python launch/evaluate.py RUN`, also for a
    pip user who trained with `deepspeed $(which ngpt-train) ...` and has no launch/ folder ("can't open file
    'launch/generate.py'"). The commands now follow the script the rank runs: a checkout's launch/train.py its
    siblings, as typed; the console script ngpt-train the console scripts ngpt-generate and ngpt-evaluate."""
    from ngpt_ds.cli.train import next_command

    from conftest import REPO

    out = tmp_path / "run"
    out.mkdir()

    def next_lines(script):
        return describe(summary_of(out), next_command(script)).splitlines()[-4:-2]

    assert next_lines(str(tmp_path / "venv" / "bin" / "ngpt-train")) == [
        f'  ngpt-generate {out} --prompt "And God said"',
        f"  ngpt-evaluate {out}",
    ]
    assert next_lines(str(REPO / "ngpt_ds" / "cli" / "train.py"))[1] == f"  ngpt-evaluate {out}"  # python -m
    assert next_lines(str(REPO / "launch" / "train.py")) == [
        f'  python {REPO}/launch/generate.py {out} --prompt "And God said"',
        f"  python {REPO}/launch/evaluate.py {out}",
    ]
    monkeypatch.chdir(REPO)
    assert next_lines("launch/train.py") == [
        f'  python launch/generate.py {out} --prompt "And God said"',
        f"  python launch/evaluate.py {out}",
    ]
