"""Worker for tests/test_hf20_trainer_deepspeed.py: transformers' Trainer fine-tunes the tiny NGPTForCausalLM
(hf_common.tiny_ngpt) under DeepSpeed, 3 AdamW steps at lr 1e-3, with or without ngpt_ds's KeepOnTheSphere callback.

    python hf_trainer_worker.py STAGE callback|plain OUT

Writes the matrices' worst deviation from unit norm and the logged losses to OUT as JSON; a refusal
(NgptConfigError) goes to stderr and exits 2.
"""

import json
import sys

import deepspeed
import torch
from hf_common import deepspeed_trainer, ended_through_exit_process, tiny_ngpt

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.sphere import max_norm_deviation


def main(stage: int, callback: bool, out: str) -> None:
    model = tiny_ngpt()
    trainer = deepspeed_trainer(model, stage, out)
    if callback:
        from ngpt_ds.hf.trainer import KeepOnTheSphere

        trainer.add_callback(KeepOnTheSphere(trainer))
    try:
        trainer.train()
    except NgptConfigError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None
    if stage == 3:
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            deviation = max_norm_deviation(model.model)
    else:
        deviation = max_norm_deviation(model.model)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    with open(out, "w") as f:
        json.dump({"deviation": deviation, "losses": losses}, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    ended_through_exit_process(main, int(sys.argv[1]), sys.argv[2] == "callback", sys.argv[3])
