"""Pipeline parallelism, 2 stages against 1, in fp32 ZeRO 1 (scale30; README "Pipeline parallelism").
tests/test_pipeline.py holds the bf16 runs' losses; here every number the hypersphere hook reports, the untied
embeddings on their two stages, and a resume's weights.

- Losses and every `ngpt/*` value the log carries (per-layer alphas, eigen learning rates, norms, the
  masters' largest deviation from unit norm) are bit-equal to the run without pipelining at every step.
- nGPT's input embedding and output head are separate matrices (untied, the paper's choice), held by the first
  and the last stage: in the checkpoints they are two tensors, each bit-equal to the plain run's.
- Resumed from step 3 at 2 stages, steps 4-5 and the final weights equal the uninterrupted run's bit for bit.
"""

from __future__ import annotations

import shutil

import torch

from conftest import read_metrics, tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml


def _weights(out):
    from ngpt_ds.infer.loading import load

    return load(out).model.state_dict()


def test_pp2_fp32_gives_the_hooks_numbers_the_untied_embeddings_and_a_resume_bit_for_bit(tmp_path, tiny_dataset):
    ds = write_ds_config(tmp_path / "z1.json", stage=1, bf16=False, micro=2, accum=4)
    train = tiny_train(5, checkpoint_interval=3)
    plain_cfg = write_yaml(tmp_path / "plain.yaml", tiny_ngpt(), train)
    piped_cfg = write_yaml(tmp_path / "pp2.yaml", tiny_ngpt(), {**train, "pipeline_parallel_size": 2})
    train_run(plain_cfg, ds, tiny_dataset, tmp_path / "plain", forked=True)
    train_run(piped_cfg, ds, tiny_dataset, tmp_path / "pp2", nproc=2)
    plain, piped = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "pp2")
    assert [m["step"] for m in piped] == [m["step"] for m in plain] == [1, 2, 3, 4, 5]
    keys = sorted(k for k in plain[0] if k.startswith("ngpt/"))
    assert "ngpt/max_norm_deviation" in keys and len(keys) > 5, keys
    for a, b in zip(plain, piped):
        assert b["train/loss"] == a["train/loss"], (a["step"], a["train/loss"], b["train/loss"])
        assert sorted(k for k in b if k.startswith("ngpt/")) == keys
        unequal = {k: (a[k], b[k]) for k in keys if a[k] != b[k]}
        assert not unequal, (a["step"], unequal)
    print(
        f"PP2 vs 1 stage, fp32: losses {[m['train/loss'] for m in piped]} equal; {len(keys)} ngpt/* values equal; "
        f"max norm deviations {[m['ngpt/max_norm_deviation'] for m in piped]}"
    )
    assert max(m["ngpt/max_norm_deviation"] for m in piped) < 1e-6

    # The untied embeddings: the first stage's layer file holds the input embedding, the last stage's the head.
    step3 = tmp_path / "pp2" / "checkpoints" / "step_00000003"
    first = torch.load(step3 / "layer_00-model_states.pt", map_location="cpu", weights_only=False)
    last = torch.load(step3 / "layer_03-model_states.pt", map_location="cpu", weights_only=False)
    assert any("embed" in k or "wte" in k for k in first), sorted(first)
    assert not set(first) & set(last)
    plain_w, piped_w = _weights(tmp_path / "plain"), _weights(tmp_path / "pp2")
    assert plain_w.keys() == piped_w.keys()
    differ = [name for name in plain_w if not torch.equal(plain_w[name], piped_w[name])]
    assert not differ, differ
    embeddings = [n for n in piped_w if piped_w[n].dim() == 2 and piped_w[n].shape[0] == 512]
    assert len(embeddings) == 2, embeddings  # input embedding and output head, vocabulary 512
    a, b = (piped_w[n] for n in embeddings)
    assert a.data_ptr() != b.data_ptr() and not torch.equal(a, b)

    # Resume from step 3 at 2 stages: steps 4 and 5 and the final weights as in the uninterrupted run.
    shutil.copytree(step3, tmp_path / "resumed" / "checkpoints" / step3.name)
    train_run(piped_cfg, ds, tiny_dataset, tmp_path / "resumed", nproc=2)
    resumed = read_metrics(tmp_path / "resumed")
    assert [m["step"] for m in resumed] == [4, 5]
    for a, b in zip(piped[3:], resumed):
        assert {k: b[k] for k in ["train/loss", *keys]} == {k: a[k] for k in ["train/loss", *keys]}, a["step"]
    resumed_w = _weights(tmp_path / "resumed")
    differ = [name for name in piped_w if not torch.equal(piped_w[name], resumed_w[name])]
    assert not differ, differ
