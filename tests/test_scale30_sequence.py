"""Ulysses sequence parallelism at a long context, against one process (scale30; README "Sequence parallelism").

- The model alone, context 512, nGPT and GPT, 2 gloo ranks: each rank's chunk of the logits, the loss and the
  gradients summed over the sequence group equal the full-sequence model's to 1e-5 (relative).
- The trainer, context 512, ZeRO 2, fp32, 4 steps: SP2 on 2 ranks and 1 rank give the same losses and gradient
  norms to 1e-5 (relative), and with nGPT the hypersphere hook keeps the masters on the sphere to 1e-6 on both.
- A context the sequence size does not divide is refused at startup, naming it, before any process group.

Run as a script (torchrun), this file is the worker of the first test: `python THIS OUT_JSON`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import read_metrics, tiny_train, torchrun, train_cmd, train_run, write_ds_config, write_yaml

HERE = Path(__file__).resolve()
SEQ_LEN = 512


def _model(arch: str) -> dict:
    return {"arch": arch, "n_layer": 2, "n_embd": 32, "n_head": 2, "seq_len": SEQ_LEN}


def _worker(out_json: str) -> None:
    sys.path.insert(0, str(HERE.parent / "workers"))
    import torch
    import torch.distributed as dist
    from common import run_worker, twins

    from ngpt_ds.model import ModelConfig
    from ngpt_ds.parallel.sequence import create_sequence_groups, parallelize_sequence

    def work() -> dict:
        groups = create_sequence_groups(2)
        result = {}
        for arch in ("ngpt", "gpt"):
            config = ModelConfig(vocab_size=64, **{**_model(arch), "n_head": 4}).validate()
            run = twins(config, parallelize_sequence, groups)
            chunks = [torch.empty_like(run.logits) for _ in range(groups.sp_size)]
            dist.all_gather(chunks, run.logits.detach().contiguous(), group=groups.sp_group)
            grad_rel = 0.0
            for p, q in zip(run.parallel.parameters(), run.reference.parameters()):
                summed = p.grad.clone()
                dist.all_reduce(summed, group=groups.sp_group)
                grad_rel = max(grad_rel, ((summed - q.grad).abs().max() / q.grad.abs().max()).item())
            logits = torch.cat(chunks, dim=1)
            result[arch] = {
                "chunk_positions": run.logits.shape[1],
                "logits_rel": ((logits - run.ref_logits).abs().max() / run.ref_logits.abs().max()).item(),
                "loss_rel": abs(run.loss.item() - run.ref_loss.item()) / abs(run.ref_loss.item()),
                "grad_rel": grad_rel,
            }
        return result

    run_worker(out_json, work)


def test_sp2_at_context_512_gives_the_full_sequence_logits_loss_and_gradients(tmp_path):
    out = tmp_path / "exact.json"
    torchrun(HERE, out, nproc=2)
    result = json.loads(out.read_text())
    print(f"SP2 vs one process, context {SEQ_LEN}: {result}")
    for arch in ("ngpt", "gpt"):
        r = result[arch]
        assert r["chunk_positions"] == SEQ_LEN // 2
        assert r["logits_rel"] < 1e-5, (arch, r)
        assert r["loss_rel"] < 1e-5, (arch, r)
        assert r["grad_rel"] < 1e-5, (arch, r)


@pytest.mark.parametrize("arch", ["ngpt", "gpt"])
def test_the_trainer_at_sp2_and_context_512_trains_as_one_rank(tmp_path, tiny_dataset, arch):
    train = tiny_train(4)
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=2, accum=1)
    one = write_yaml(tmp_path / "one.yaml", _model(arch), train)
    sp2 = write_yaml(tmp_path / "sp2.yaml", _model(arch), {**train, "sequence_parallel_size": 2})
    train_run(one, ds, tiny_dataset, tmp_path / "one", forked=True)
    train_run(sp2, ds, tiny_dataset, tmp_path / "sp2", nproc=2)  # one sequence group: the same global batch
    a, b = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "sp2")
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3, 4]
    loss_rel = [abs(x["train/loss"] - y["train/loss"]) / abs(x["train/loss"]) for x, y in zip(a, b)]
    norm_rel = [abs(x["train/grad_norm"] - y["train/grad_norm"]) / x["train/grad_norm"] for x, y in zip(a, b)]
    print(f"{arch} SP2 vs 1 rank, context {SEQ_LEN}: loss rel {loss_rel}, grad-norm rel {norm_rel}")
    assert max(loss_rel) < 1e-5 and max(norm_rel) < 1e-5
    if arch == "ngpt":  # the hook renormalized the masters on both, each matrix once per step
        deviations = [m["ngpt/max_norm_deviation"] for m in a + b]
        print(f"max norm deviations {deviations}")
        assert max(deviations) < 1e-6


def test_a_context_the_sequence_size_does_not_divide_is_refused_at_startup(tmp_path, tiny_dataset):
    config = write_yaml(
        tmp_path / "bad.yaml", {**_model("ngpt"), "seq_len": 511}, {**tiny_train(2), "sequence_parallel_size": 2}
    )
    ds = write_ds_config(tmp_path / "z2.json", stage=2, bf16=False, micro=2, accum=1)
    proc = torchrun(*train_cmd(config, ds, tiny_dataset, tmp_path / "out"), nproc=2, check=False)
    assert proc.returncode != 0
    assert "model.seq_len = 511 is not divisible by train.sequence_parallel_size = 2" in proc.stderr, proc.stderr[
        -3000:
    ]
    assert "exitcode: 2" in proc.stderr and "step " not in proc.stdout
    # No traceback from the trainer (torchrun adds its own report of the ranks' exit codes).
    assert not [line for line in proc.stderr.splitlines() if line.strip().startswith("File ") and "ngpt_ds" in line]
    assert not (tmp_path / "out").exists()


if __name__ == "__main__":
    _worker(sys.argv[1])
