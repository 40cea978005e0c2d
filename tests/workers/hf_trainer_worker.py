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
from hf_common import tiny_ngpt, token_ids
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.sphere import max_norm_deviation


class Data(Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        ids = token_ids(i, shape=(16,))
        return {"input_ids": ids, "labels": ids}


def main(stage: int, callback: bool, out: str) -> None:
    model = tiny_ngpt()
    ds = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {"stage": stage},
    }
    args = TrainingArguments(
        output_dir=out + ".trainer",
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        deepspeed=ds,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Data())
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
    main(int(sys.argv[1]), sys.argv[2] == "callback", sys.argv[3])
