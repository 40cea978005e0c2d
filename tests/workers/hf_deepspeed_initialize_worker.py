"""Worker for tests/test_hf23_deepspeed_direct.py: an engine of `deepspeed.initialize` itself (no transformers
Trainer) at ZeRO 0 in bf16 trains the tiny NGPTForCausalLM (hf_common.tiny_ngpt), 3 AdamW steps at lr 1e-3.

    python hf_deepspeed_initialize_worker.py MODE OUT

MODE: `refused` (as it is), `frozen_scales` (every parameter but the sphere matrices frozen), `kept` (with
keep_on_the_sphere(engine)). Writes the losses, the working copy's worst deviation from unit norm, its dtype and,
when kept, the masters' deviation to OUT as JSON; a refusal (NgptConfigError) goes to stderr and exits 2.
"""

import json
import sys

import torch
from hf_common import ds_config, ended_through_exit_process, start_engine, tiny_ngpt, token_ids, train_step

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.sphere import max_norm_deviation, sphere_matrices


def main(mode: str, out: str) -> None:
    model = tiny_ngpt()
    if mode == "frozen_scales":
        for p in model.parameters():
            if not any(m.param is p for m in sphere_matrices(model)):
                p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    engine = start_engine(model, ds_config(stage=0, bf16=True), params, lr=1e-3)
    hook = None
    if mode == "kept":
        from ngpt_ds.hf.trainer import keep_on_the_sphere

        hook = keep_on_the_sphere(engine)
    losses = []
    try:
        for i in range(3):
            losses.append(float(train_step(engine, token_ids(i)).detach()))
    except NgptConfigError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None
    result = {
        "losses": losses,
        "working": max_norm_deviation(model.model),
        "dtype": str(model.model.embed.weight.dtype),
    }
    if hook is not None:
        result["masters"] = hook.max_deviation()
    with open(out, "w") as f:
        json.dump(result, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    ended_through_exit_process(main, sys.argv[1], sys.argv[2])
