"""The commands a run prints at its end, pasted into a shell, for a run folder or checkout with a space, a quote or
non-ASCII letters in its path (helper red35, session 35).

Fault: the closing lines printed the run folder as it is: `--out "my runs/ünï cödé's run"` ended with
'  python .../launch/generate.py /.../my runs/ünï cödé's run --prompt "And God said"', which a shell splits into
other arguments (and an unmatched quote); the same for `tensorboard --logdir` and a checkout in a folder with a space.
Each path is now quoted as a shell reads it (shlex.quote; a path of plain characters is printed as before,
tests/test_final_summary.py).
"""

import shlex
import sys

from ngpt_ds.cli.train import next_command

from conftest import REPO, run, tiny_ngpt, tiny_train, train_cmd, write_ds_config, write_yaml


def test_the_closing_commands_of_a_run_in_a_folder_with_a_space_and_a_quote_paste_as_one_argument(
    tmp_path, tiny_dataset
):
    out = tmp_path / "my runs" / "ünï cödé's run"
    config = write_yaml(tmp_path / "tiny.yaml", tiny_ngpt(), tiny_train(2, checkpoint_interval=2))
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=4, accum=1)
    stdout = run([sys.executable, *train_cmd(config, ds, tiny_dataset, out)]).stdout
    lines = stdout.splitlines()
    (dashboard,) = [line for line in lines if line.startswith("  dashboard:")]
    assert shlex.split(dashboard.split(":", 1)[1]) == ["tensorboard", "--logdir", str(out / "tensorboard")]
    commands = lines[lines.index("next:") + 1 : lines.index("next:") + 4]
    launch = REPO / "launch"
    assert [shlex.split(line) for line in commands] == [
        ["python", str(launch / "generate.py"), str(out), "--prompt", "And God said"],
        ["python", str(launch / "evaluate.py"), str(out)],
        ["python", str(launch / "export.py"), str(out), "--out", "exports/ünï cödé's run"],
    ], commands  # old code: ValueError: No closing quotation (the ' of "cödé's")


def test_a_checkout_in_a_folder_with_a_space_is_quoted_in_the_next_commands(tmp_path):
    launch = tmp_path / "my code" / "launch"
    launch.mkdir(parents=True)
    for name in ("train.py", "generate.py"):
        (launch / name).write_text("")
    command = next_command(str(launch / "train.py"))
    assert shlex.split(command("evaluate")) == [
        "python",
        str(launch / "evaluate.py"),
    ]  # old: [..., '.../my', 'code/...']
