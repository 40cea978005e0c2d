"""What the workers that train the Hugging Face NGPTForCausalLM under DeepSpeed share: DeepSpeed imported
without its shared-memory op, the tiny model every job trains, its batches and steps, transformers' Trainer
of it under DeepSpeed, the frame of the 2-rank jobs that run a table of cases, and the end of every worker
(ended_through_exit_process).

Importable as `hf_common` from any worker: torchrun and python run a worker as a script, which puts this
folder first on sys.path.
"""

import json
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

import deepspeed.ops

deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # not used; its JIT build takes 30 s
import deepspeed  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def tiny_ngpt(n_layer: int = 2):
    """NGPTForCausalLM of a 512-token vocabulary, width 32, 2 heads, built after torch.manual_seed(0)."""
    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(arch="ngpt", vocab_size=512, n_layer=n_layer, n_embd=32, n_head=2, seq_len=32)
    return MODELS["ngpt"](CONFIGS["ngpt"].from_model_config(config))


def token_ids(seed: int, shape: tuple[int, ...] = (4, 16)) -> torch.Tensor:
    """Random token ids 3..511 (above the special tokens) from a generator seeded with `seed`."""
    return torch.randint(3, 512, shape, generator=torch.Generator().manual_seed(seed))


class TokenData(torch.utils.data.Dataset):
    """16 sequences of 16 token ids, sequence i from token_ids(i), as inputs and labels."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        ids = token_ids(i, shape=(16,))
        return {"input_ids": ids, "labels": ids}


def deepspeed_trainer(model, stage: int, out: str):
    """transformers' Trainer of `model` on TokenData under DeepSpeed at ZeRO `stage`: 3 AdamW steps at lr 1e-3 on
    micro-batches of 4, a loss logged every step, nothing saved; the DeepSpeed JSON leaves the batch sizes and the
    clipping to the Trainer ("auto"). Its output folder is `out`.trainer."""
    from transformers import Trainer, TrainingArguments

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
    return Trainer(model=model, args=args, train_dataset=TokenData())


def ds_config(stage: int, bf16: bool) -> dict:
    """A DeepSpeed JSON for micro-batches of 4 sequences, no accumulation."""
    return {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": bf16},
        "zero_optimization": {"stage": stage},
    }


def start_engine(model, ds: dict, params, lr: float, json_optimizer: bool = False):
    """deepspeed.initialize with AdamW at `lr`: the JSON's optimizer block (DeepSpeed builds it) or a torch
    AdamW of `params`."""
    if json_optimizer:
        ds["optimizer"] = {"type": "AdamW", "params": {"lr": lr}}
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=ds)
    else:
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(params, lr=lr), config=ds)
    return engine


def train_step(engine, ids: torch.Tensor) -> torch.Tensor:
    """One engine step on `ids` as inputs and labels; returns the loss."""
    loss = engine(ids, labels=ids, use_cache=False).loss
    engine.backward(loss)
    engine.step()
    return loss


def whole_value(p: torch.Tensor, stage: int) -> torch.Tensor:
    """A copy of parameter `p` as a whole (gathered under ZeRO 3)."""
    if stage == 3:
        with deepspeed.zero.GatheredParameters([p]):
            return p.detach().clone()
    return p.detach().clone()


def error_line(e: BaseException) -> str:
    """The last line of an exception's report: `Type: message`."""
    return traceback.format_exception_only(e)[-1].strip()


def run_cases(out: str, cases: dict, case) -> None:
    """Join the gloo group through deepspeed.init_distributed, run `case(rank, **options)` for each named
    case in order on every rank, and write each rank's {name: result} to `out`.<rank> as JSON."""
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    results = {name: case(rank, **options) for name, options in cases.items()}
    with open(f"{out}.{rank}", "w") as f:
        json.dump(results, f)


def ended_through_exit_process(main: Callable[..., object], *args: object) -> NoReturn:
    """`main(*args)`, then the end of this process through ngpt_ds.distributed.exit_process with its exit status (0,
    or a SystemExit's code), with no interpreter teardown: gloo's worker threads can still be releasing the tensors of
    the last collective then, and the process aborts ('terminate called without an active exception', exit -6) after
    all its work is written (exit_process's docstring; a rank script of CI run 101). Another exception keeps its
    traceback (exit status 1)."""
    from ngpt_ds.distributed import exit_process

    try:
        main(*args)
        code = 0
    except SystemExit as stop:
        if stop.code is not None and not isinstance(stop.code, int):
            print(stop.code, file=sys.stderr)  # sys.exit("message"), as the interpreter reports it
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    exit_process(code, joined=True)
    raise AssertionError("exit_process returned")  # it does not: os._exit
