"""Worker for tests/test_hf25_deepspeed_leftovers.py, under torchrun with 2 ranks on gloo: the tiny
NGPTForCausalLM (hf_common.tiny_ngpt) trained 3 steps by a DeepSpeed engine at ZeRO STAGE (1 or 2) with
ngpt_ds's keep_on_the_sphere, then released, is fine-tuned by a plain torch AdamW, after engine.destroy() and
beside the live engine; then one more engine step without the renormalization.

    torchrun --nproc-per-node 2 hf_fine_tune_after_engine_worker.py STAGE OUT

Each rank writes to OUT.<rank> as JSON: the engine's deviation, whether the embedding kept DeepSpeed's
_hp_mapping, each fine-tune's losses, movement and deviation (or its refusal), and the live engine step's
refusal with whether the weights and fp32 masters stayed bit for bit.
"""

import json
import sys

import deepspeed
import torch
import torch.distributed as dist
from hf_common import ended_through_exit_process, tiny_ngpt, token_ids

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.hf.trainer import keep_on_the_sphere, release
from ngpt_ds.model.sphere import max_norm_deviation


def batch(rank: int, i: int) -> torch.Tensor:
    return token_ids(100 * rank + i)


def trained_by_deepspeed(rank: int, stage: int):
    model = tiny_ngpt()
    ds = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=ds)
    hook = keep_on_the_sphere(engine)
    for i in range(3):
        ids = batch(rank, i)
        engine.backward(engine(ids, labels=ids, use_cache=False).loss)
        engine.step()
    deviation = hook.max_deviation()
    release(model)
    return model, engine, deviation


def plain_fine_tune(rank: int, model) -> dict:
    weight = model.model.embed.weight
    start = weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    try:
        for i in range(3):
            ids = batch(rank, 10 + i)
            loss = model(ids, labels=ids, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
    except NgptConfigError as e:
        return {"refused": str(e)}
    return {
        "losses": losses,
        "moved": float((weight.detach() - start).abs().max()),
        "deviation": max_norm_deviation(model.model),
    }


def main(stage: int, out: str) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    result = {}
    model, engine, result["deepspeed_deviation"] = trained_by_deepspeed(rank, stage)
    result["mapping_before_destroy"] = getattr(model.model.embed.weight, "_hp_mapping", None) is not None
    engine.destroy()
    result["destroyed"] = plain_fine_tune(rank, model)

    model, engine, _ = trained_by_deepspeed(rank, stage)
    result["beside_the_engine"] = plain_fine_tune(rank, model)

    # The engine stepping its masters without the renormalization: refused before the update, on every rank.
    model, engine, _ = trained_by_deepspeed(rank, stage)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    masters = [g.detach().clone() for g in engine.optimizer.single_partition_of_fp32_groups]
    ids = batch(rank, 20)
    try:
        engine.backward(engine(ids, labels=ids, use_cache=False).loss)
        engine.step()
        result["live"] = "trained"
    except NgptConfigError as e:
        result["live"] = str(e)
    result["live_weights_kept"] = all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    result["live_masters_kept"] = all(
        torch.equal(a, b) for a, b in zip(masters, engine.optimizer.single_partition_of_fp32_groups)
    )
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    ended_through_exit_process(main, int(sys.argv[1]), sys.argv[2])
