"""Settings changed between a run and its resume (same --out), as over a week-long run.

Faults:
- the optimizer settings of the checkpoint won over the YAML: a resume with another train.lr, betas,
  eps or weight_decay trained on with the old values (torch's Optimizer.load_state_dict and LambdaLR's
  load_state_dict restore them), while config.yaml recorded the new ones; and the first step after
  a resume trained at the LR of the checkpoint's schedule (0 after extending a finished cosine run),
  all without a word;
- a resume on another dataset with as many training windows (the same corpus prepared in another
  document order) trained on silently: the saved data position pointed into other windows;
- another train.seed was refused only by the loader, after the engine had started and loaded the
  checkpoint, with <out>/config.yaml already rewritten to the refused seed;
- a precision (fp32 <-> bf16) other than the checkpoint's failed inside DeepSpeed's load with a
  KeyError / FileNotFoundError traceback (exit 1), after the engine had started.

One rank, ZeRO 0, fp32: the whole optimizer state lies in one file, so the LR each step really used is
read back from the parameters and Adam's moments.
"""

import math
import shutil
import sys

import pytest
import torch

from ngpt_ds.train.optim import lr_factor

from conftest import read_metrics, run, tiny_ngpt, tiny_train, torchrun, train_cmd, write_ds_config, write_yaml

MODEL = tiny_ngpt()
LR = 1e-2


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_dataset):
    """A finished 6-step run (cosine to 0 at step 6, lr 1e-2) with its checkpoint of step 6."""
    tmp = tmp_path_factory.mktemp("resume_changes")
    out = tmp / "run"
    ds = write_ds_config(tmp / "z0.json", stage=0, bf16=False, micro=4, accum=1)
    torchrun(*train_cmd(write_yaml(tmp / "six.yaml", MODEL, tiny_train(6, lr=LR)), ds, tiny_dataset, out), nproc=1)
    return out, ds


def copy_of(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished[0] / "checkpoints", out / "checkpoints")
    return out


def states(checkpoint):
    return torch.load(checkpoint / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)


def lr_used(before, after):
    """The LR of the Adam step from checkpoint `before` to `after`, from the never-decayed, never-renormalized
    vectors (s_qk, s_u, s_v, the alphas, s_z): p' = p - lr * m_hat / (sqrt(v_hat) + eps)."""
    old, new = states(before), states(after)
    group = next(g for g in new["optimizer"]["param_groups"] if g["name"] == "vectors")
    (beta1, beta2), eps = group["betas"], group["eps"]
    # parameter_groups: the vectors are the parameters that are not matrix weights, in the model's order.
    names = [name for name in new["module"] if not name.endswith(".weight")]
    assert len(names) == len(group["params"])
    estimates = []
    for name, index in zip(names, group["params"]):
        state = new["optimizer"]["state"][index]
        t = float(state["step"])
        update = (state["exp_avg"] / (1 - beta1**t)) / ((state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t)) + eps)
        moved = old["module"][name] - new["module"][name]
        big = update.abs() > 0.1
        estimates.append(moved[big] / update[big])
    return torch.cat(estimates).median().item()


def test_a_resume_with_changed_lr_schedule_and_adam_settings_trains_with_them_and_says_so(
    finished, tmp_path, tiny_dataset
):
    """Fault: the checkpoint's lr, betas, eps and weight_decay won over the YAML's, silently, and step 7
    trained at the finished schedule's LR 0."""
    out = copy_of(finished, tmp_path)
    changed = tiny_train(
        8, lr=5e-3, betas=[0.5, 0.6], eps=1e-6, weight_decay=0.5, checkpoint_interval=1, keep_checkpoints=3
    )
    proc = torchrun(
        *train_cmd(write_yaml(tmp_path / "eight.yaml", MODEL, changed), finished[1], tiny_dataset, out), nproc=1
    )
    expected = [5e-3 * lr_factor(k, max_steps=8, warmup_steps=0, min_lr_ratio=0.0) for k in (6, 7, 8)]
    checkpoints = out / "checkpoints"
    step = {s: checkpoints / f"step_{s:08d}" for s in (7, 8)}
    step[6] = finished[0] / "checkpoints" / "step_00000006"
    # The LR each step used, read back from its update: 7.32e-4 and 1.90e-4 (old code: 0, then 3.81e-4).
    assert lr_used(step[6], step[7]) == pytest.approx(expected[0], rel=1e-3)
    assert lr_used(step[7], step[8]) == pytest.approx(expected[1], rel=1e-3)
    assert [m["train/lr"] for m in read_metrics(out)] == pytest.approx(expected[:2], abs=1e-12)  # the LR each applied
    groups = {g["name"]: g for g in states(step[8])["optimizer"]["param_groups"]}
    for group in groups.values():
        assert (tuple(group["betas"]), group["eps"], group["initial_lr"]) == ((0.5, 0.6), 1e-6, 5e-3)
    assert (groups["matrices"]["weight_decay"], groups["vectors"]["weight_decay"]) == (0.5, 0.0)
    said = proc.stdout + proc.stderr
    assert (
        "changed since the checkpoint: train.betas [0.9, 0.95] -> [0.5, 0.6], train.eps 1e-08 -> 1e-06, "
        "train.weight_decay 0.0 -> 0.5; the optimizer uses this run's values from step 7 on" in said
    )
    assert (
        "changed since the checkpoint: train.lr 0.01 -> 0.005, train.max_steps 6 -> 8; the LR schedule (cosine "
        "from lr 0.005 to min_lr 0 at step 8) is recomputed at the same step, not restarted: step 7 trains at LR "
        f"{expected[0]:.4g}, where the checkpoint's schedule had 0" in said
    )

    assert "changed since the checkpoint: global batch" not in said  # the same batch: no such line


def test_a_resume_with_another_global_batch_says_so(finished, tmp_path, tiny_dataset):
    """Fault: a resume with another global batch (micro-batch 4 -> 2 on one rank) continued exactly but said
    nothing, though every later step takes half the tokens while the LR schedule still counts steps."""
    out = copy_of(finished, tmp_path)
    ds = write_ds_config(tmp_path / "z0_micro2.json", stage=0, bf16=False, micro=2, accum=1)
    config = write_yaml(tmp_path / "seven.yaml", MODEL, tiny_train(7, lr=LR))
    proc = torchrun(*train_cmd(config, ds, tiny_dataset, out), nproc=1)
    said = proc.stdout + proc.stderr
    assert (
        "changed since the checkpoint: global batch 4 -> 2 sequences per step (micro-batch x accumulation x "
        "data-parallel ranks: 4 x 1 x 1 -> 2 x 1 x 1), so 128 -> 64 tokens per step from here on" in said
    ), said[-3000:]
    assert [m["step"] for m in read_metrics(out)] == [7]


def test_a_checkpoint_recording_an_infinite_batch_resumes_without_a_batch_line(finished, tmp_path, tiny_dataset):
    """Fault: the line announcing another global batch read the checkpoint's config.yaml with int(), and a
    crafted or hand-edited config.yaml (manifest sealed again) whose deepspeed section records
    train_micro_batch_size_per_gpu: .inf stopped the resume after the engine had started and loaded the
    checkpoint, with an OverflowError traceback on every rank (exit 1). That record is not the trainer's: no
    line about it, the resume goes on."""
    import yaml

    from ngpt_ds.train import manifest

    out = copy_of(finished, tmp_path)
    step6 = out / "checkpoints" / "step_00000006"
    saved = yaml.safe_load((step6 / "config.yaml").read_text())
    saved["deepspeed"]["train_micro_batch_size_per_gpu"] = math.inf
    (step6 / "config.yaml").write_text(yaml.safe_dump(saved))
    manifest.write_manifest(step6, manifest.build_manifest(step6, 6))
    config = write_yaml(tmp_path / "seven.yaml", MODEL, tiny_train(7, lr=LR))
    proc = run([sys.executable, *train_cmd(config, finished[1], tiny_dataset, out)], check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-3000:]
    assert "changed since the checkpoint: global batch" not in said
    assert [m["step"] for m in read_metrics(out)] == [7]


def test_a_resume_in_another_precision_is_refused_before_the_engine_starts(finished, tmp_path, tiny_dataset):
    """Fault: fp32 -> bf16 failed inside DeepSpeed's checkpoint load with a KeyError traceback (exit 1)."""
    out = copy_of(finished, tmp_path)
    bf16 = write_ds_config(tmp_path / "z0_bf16.json", stage=0, bf16=True, micro=4, accum=1)
    config = write_yaml(tmp_path / "ten.yaml", MODEL, tiny_train(10, lr=LR))
    # A plain process (one rank): torchrun would add its own traceback for any failed child.
    proc = run([sys.executable, *train_cmd(config, bf16, tiny_dataset, out)], check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in said, said[-3000:]
    assert (
        f"the checkpoint was trained in fp32 (the deepspeed section of its config.yaml) and --deepspeed_config "
        f"{bf16} trains in bf16" in said
    )
    assert "DeepSpeed engine" not in said  # refused before the engine started
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_")) == ["step_00000006"]


def test_a_resume_on_other_training_data_is_refused_and_on_a_copy_of_its_own_goes_on(finished, tmp_path, tiny_dataset):
    """Fault: the same corpus prepared in another document order (as many windows, the same tokenizer)
    resumed without a word, re-reading windows the run had seen and skipping others."""
    import json
    import pydoc_data.topics

    from ngpt_ds.data.prepare import PrepareConfig, prepare_dataset

    corpus = tmp_path / "reversed.jsonl"
    texts = reversed(list(pydoc_data.topics.topics.values()))
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    reordered = prepare_dataset(
        PrepareConfig(
            inputs=(str(corpus),),
            out=tmp_path / "reordered",
            tokenizer=tiny_dataset / "tokenizer.model",
            val_fraction=0.1,
            workers=1,
            progress=False,
        )
    )
    meta = [json.loads((d / "meta.json").read_text())["splits"]["train"] for d in (tiny_dataset, reordered)]
    assert meta[0]["tokens"] == meta[1]["tokens"] == 255704  # as many windows: the loader's check passes
    out = copy_of(finished, tmp_path)
    config = write_yaml(tmp_path / "ten.yaml", MODEL, tiny_train(10, lr=LR))
    proc = run([sys.executable, *train_cmd(config, finished[1], reordered, out)], check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in said, said[-3000:]
    assert (
        f"error: --out {out} holds a run, and --resume auto (the default) continues it from its newest checkpoint, "
        f"{out / 'checkpoints' / 'step_00000006'}: --data {reordered} holds other training data "
        f"than the checkpoint was trained on (data_dir {tiny_dataset})" in said
    )
    assert not (out / "metrics.jsonl").exists()  # nothing trained

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset, copy)  # moved or copied: the same data
    run([sys.executable, *train_cmd(config, finished[1], copy, out)])
    assert [m["step"] for m in read_metrics(out)] == [7, 8, 9, 10]


def test_another_seed_is_refused_before_the_engine_starts_and_leaves_the_run_folder_as_it_was(
    finished, tmp_path, tiny_dataset
):
    """Fault: the loader refused another seed only after the engine had started and the checkpoint was
    loaded; by then <out>/config.yaml said seed 7 while every checkpoint was trained with 1234."""
    out = copy_of(finished, tmp_path)
    shutil.copy(finished[0] / "config.yaml", out / "config.yaml")
    config = write_yaml(tmp_path / "seed7.yaml", MODEL, tiny_train(10, lr=LR, seed=7))
    proc = run([sys.executable, *train_cmd(config, finished[1], tiny_dataset, out)], check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in said, said[-3000:]
    assert "DeepSpeed engine" not in said
    assert (out / "config.yaml").read_bytes() == (finished[0] / "config.yaml").read_bytes()
    assert (
        f"error: --out {out} holds a run, and --resume auto (the default) continues it from its newest checkpoint, "
        f"{out / 'checkpoints' / 'step_00000006'}: train.seed = 1234 in the checkpoint, 7 now" in said
    )


def test_the_data_fingerprint_ignores_the_folder_and_is_absent_without_block_hashes(tmp_path, tiny_dataset):
    """Not a fault of the old code: guards the check above. `--add-hashes` on a dataset prepared before
    block hashes, between a run and its resume, must not refuse the resume (no fingerprint either side)."""
    import dataclasses

    import yaml

    from ngpt_ds.data.shards import load_dataset_meta
    from ngpt_ds.model import ModelConfig
    from ngpt_ds.train.preflight import check_resume_fits, train_data_fingerprint

    meta = load_dataset_meta(tiny_dataset)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset, copy)
    assert train_data_fingerprint(load_dataset_meta(copy)) == train_data_fingerprint(meta) is not None
    train = meta.splits["train"]
    bare = dataclasses.replace(train, shards=tuple(dataclasses.replace(s, sha256_blocks=None) for s in train.shards))
    unhashed = dataclasses.replace(meta, splits={**meta.splits, "train": bare}, hash_block_bytes=None)
    assert train_data_fingerprint(unhashed) is None
    model = ModelConfig(**{**MODEL, "vocab_size": meta.vocab_size})
    step = tmp_path / "step_00000006"
    step.mkdir()
    for recorded, data in ((train_data_fingerprint(meta), unhashed), (None, meta)):
        saved = {"model": model.to_dict(), "tokenizer_sha256": meta.tokenizer_sha256, "train_data_sha256": recorded}
        (step / "config.yaml").write_text(yaml.safe_dump(saved))
        check_resume_fits(step, model, data)  # no error
