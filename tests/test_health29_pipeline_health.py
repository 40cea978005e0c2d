"""ngpt_health under pipeline parallelism: every stage's per-layer values reach the log through one float64 all-reduce
over DeepSpeed's pipe-parallel group (ngpt_ds/train/metrics.py `_every_stage`), no longer an all_gather_object over
the world at every log line. Real runs on gloo ranks: the 2-stage run logs every layer's ngpt/* keys, finite, and
the same values, bit for bit, as the run without pipelining of the same model and data."""

import json
import math

import pytest

from conftest import REPO, read_metrics, torchrun, write_ds_config, write_yaml

# 3 blocks over 2 stages: stage 0 holds the embedding and blocks 0-1, stage 1 block 2 and the head (an uneven cut).
MODEL = {"arch": "ngpt", "n_layer": 3, "n_embd": 32, "n_head": 2, "seq_len": 32}
TRAIN = {"max_steps": 3, "lr": 1e-2, "log_interval": 1, "eval_interval": 0, "checkpoint_interval": 0}
TRAIN |= {"peak_tflops": 1.0}
NAMES = [f"ngpt/{kind}/layer_{i:02d}" for i in range(3) for kind in ("alpha_attn", "alpha_mlp", "s_qk")]
NAMES += ["ngpt/s_z_mean"]


def _train(tmp_path, data, name, *, nproc, pipeline, bf16=True, accum=4):
    # bf16, ZeRO 1, 4 micro-batches a step: tests/test_pipeline.py's layout, where PP2 reproduces PP1 bit for bit.
    ds = write_ds_config(tmp_path / f"{name}.json", stage=1, bf16=bf16, micro=2, accum=accum)
    config = write_yaml(tmp_path / f"{name}.yaml", MODEL, {**TRAIN, "pipeline_parallel_size": pipeline})
    args = ["--config", config, "--deepspeed_config", ds, "--data", data, "--out", tmp_path / name, "--no-progress"]
    torchrun(REPO / "launch/train.py", *args, nproc=nproc)
    return read_metrics(tmp_path / name)


def test_health29_pp2_logs_every_stages_health_bit_equal_to_the_run_without_pipeline(tmp_path, tiny_dataset):
    plain = _train(tmp_path, tiny_dataset, "plain", nproc=1, pipeline=1)
    piped = _train(tmp_path, tiny_dataset, "pp2", nproc=2, pipeline=2)
    assert [m["step"] for m in piped] == [1, 2, 3]
    for record in piped:
        # Every layer's keys, in the plain run's order, and no other ngpt/ key but the norm deviation.
        assert [k for k in record if k.startswith("ngpt/")] == [*NAMES, "ngpt/max_norm_deviation"]
        assert all(math.isfinite(record[k]) for k in NAMES)
    for key in NAMES:
        # Exact: x + 0.0 in float64 is x, and a float32 mean is exact in float64.
        assert [m[key] for m in piped] == [m[key] for m in plain], key
    # Not a vacuous equality: the values moved off their initial ones and differ from layer to layer.
    assert len({piped[-1][f"ngpt/alpha_attn/layer_{i:02d}"] for i in range(3)}) == 3
    assert piped[-1]["ngpt/s_z_mean"] != piped[0]["ngpt/s_z_mean"]
    # The whole records agree on every ngpt/ value, text for text (json's repr of the same float).
    lines = {name: (tmp_path / name / "metrics.jsonl").read_text().splitlines() for name in ("plain", "pp2")}
    health = {
        name: [{k: v for k, v in json.loads(line).items() if k in NAMES} for line in text if '"ngpt/' in line]
        for name, text in lines.items()
    }
    assert health["pp2"] == health["plain"] and len(health["pp2"]) == 3


def test_health29_pp2_dp2_sums_each_stage_once_not_once_per_data_parallel_replica(tmp_path, tiny_dataset):
    """4 ranks, 2 stages x 2 replicas, fp32: the sum runs over the pipe-parallel group (one rank per stage). Over the
    world each value would be counted once per replica (twice here); the values are the single process's."""
    single = _train(tmp_path, tiny_dataset, "single", nproc=1, pipeline=1, bf16=False, accum=4)
    piped = _train(tmp_path, tiny_dataset, "pp2dp2", nproc=4, pipeline=2, bf16=False, accum=2)
    assert [m["step"] for m in piped] == [1, 2, 3]
    for key in NAMES:
        # tests/test_pipeline.py's tolerance for this layout (the data-parallel mean of the gradients rounds apart).
        assert [m[key] for m in piped] == pytest.approx([m[key] for m in single], abs=1e-5), key


@pytest.mark.parametrize("n_layer", [2, 5])
def test_health29_the_names_every_stage_sums_into_are_the_run_without_pipelines(n_layer):
    """`_health_names` lists, from the layer count alone, the keys and order ngpt_health logs without a pipeline."""
    import torch

    from ngpt_ds.train.metrics import _health_names

    names = _health_names(n_layer)
    assert len(names) == 3 * n_layer + 1 and len(set(names)) == len(names)
    assert names[:3] == ["ngpt/alpha_attn/layer_00", "ngpt/alpha_mlp/layer_00", "ngpt/s_qk/layer_00"]
    assert names[-2:] == [f"ngpt/s_qk/layer_{n_layer - 1:02d}", "ngpt/s_z_mean"]
    # A float32 mean survives the float64 sum with zeros bit for bit.
    value = torch.tensor([1.0 / 3.0], dtype=torch.float32).mean().item()
    total = torch.tensor([value, 0.0], dtype=torch.float64).sum().item()
    assert total == value and torch.tensor(total, dtype=torch.float32).item() == value
