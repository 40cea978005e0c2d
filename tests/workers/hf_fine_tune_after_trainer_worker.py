"""Worker for tests/test_hf25_deepspeed_leftovers.py: transformers' Trainer trains the tiny NGPTForCausalLM
(hf_common.tiny_ngpt) 3 steps at ZeRO 2 with ngpt_ds's KeepOnTheSphere callback, then 3 plain torch AdamW steps
fine-tune the same model object, on one process.

    python hf_fine_tune_after_trainer_worker.py OUT

Writes how far the embedding moved in the fine-tune and the matrices' worst deviation from unit norm to OUT as
JSON; a refusal (NgptConfigError) goes to stderr and exits 2.
"""

import json
import sys

import torch
from hf_common import deepspeed_trainer, ended_through_exit_process, tiny_ngpt, token_ids

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.hf.trainer import KeepOnTheSphere
from ngpt_ds.model.sphere import max_norm_deviation


def main(out: str) -> None:
    model = tiny_ngpt()
    trainer = deepspeed_trainer(model, 2, out)
    trainer.add_callback(KeepOnTheSphere(trainer))
    trainer.train()
    weight = model.model.embed.weight
    start = weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    try:
        for i in range(3):
            ids = token_ids(50 + i)
            model(ids, labels=ids, use_cache=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    except NgptConfigError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None
    moved = float((weight.detach() - start).abs().max())
    with open(out, "w") as f:
        json.dump({"moved": moved, "deviation": max_norm_deviation(model.model)}, f)


if __name__ == "__main__":
    ended_through_exit_process(main, sys.argv[1])
