"""Training-step speed of ngpt_ds against NVIDIA's official nGPT code, side by side in one process.

    python bench/peer_step.py --official PATH [--rounds 10] [--ds ds_configs/zero2.json]

PATH is a checkout of NVIDIA/ngpt (or its model.py). The script reads that model.py as it is;
nothing of it is copied into this repository. The official code calls flash-attn, which needs
a GPU, so before the import a stand-in `flash_attn` module is put into sys.modules that
computes the same attention with torch's scaled_dot_product_attention.

Four steps alternate in each round, so all four see the same machine state (each round starts
one step later than the one before, so no step always runs after the same neighbour):

- official nGPT and official GPT: the official train.py's step (bf16 autocast around the
  forward, backward, gradient clipping at 1.0, the model's own AdamW from
  configure_optimizers, zero_grad) and, for nGPT, train.py's normalize_matrices after it;
- ngpt_ds nGPT and GPT: DeepSpeed engines from the given JSON (bf16, ZeRO 2 by default) as
  the trainer builds them, nGPT with its hypersphere hook (bench/step_time.py). A bf16 JSON
  stays bf16 on a CPU without native bf16 matmuls, where the trainer trains and the other
  scripts time fp32 (bench/engines.py): the official code keeps its blocks' weights in bf16,
  so both sides then run torch's reference bf16 kernel, and the script says so;
- with `--compile`, also ngpt_ds nGPT and GPT with the engine's module through torch.compile
  (the official train.py's default is compile = False, so the official side stays eager);
- with `--flash-compiled` too, a third compiled ngpt_ds nGPT whose attention stays on SDPA's flash kernel
  at every context (as before `written_attention`, ngpt_ds/model/blocks.py): the written attention's gain
  and the ratio to the official nGPT without it, from the same rounds.

It prints ms/step and tokens/s (medians over rounds) and the ratios, each ratio with the
median, minimum and maximum of its per-round values. `--threads 1 --clock cpu` times the
steps by this process's CPU time, which other processes on a shared machine do not stretch
(bench/mfu.py explains why that needs one thread).

CPU only: the official side runs on the CPU. On a machine with a GPU ngpt_ds's engines would run
there, so the script stops with an error unless run as DS_ACCELERATOR=cpu (which times the CPU).
PATH must be a model.py (or a folder holding one) whose text names GPTConfig, use_nGPT and
base_scale: importing a file runs it, so nothing else is imported.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import add_timing_arguments, apply_timing_arguments, count, json_file  # noqa: E402
from step_time import make_step  # noqa: E402

from ngpt_ds import distributed  # noqa: E402
from ngpt_ds.train.builder import init_process_group  # noqa: E402

#: The shape of the comparison: 4 layers, d 256, 4 heads, context 256, batch 8, vocabulary 4096.
SHAPE = dict(n_layer=4, n_embd=256, n_head=4, seq_len=256, vocab_size=4096)
BATCH = 8
#: --flash-compiled's step: compiled ngpt_ds nGPT with SDPA's flash attention at every context
FLASH_STEP = "ngpt_ds nGPT compiled, flash attention"

#: (label, side, arch) in the order the steps run inside a round.
STEPS = (
    ("official nGPT", "official", "ngpt"),
    ("official GPT", "official", "gpt"),
    ("ngpt_ds nGPT", "ngpt_ds", "ngpt"),
    ("ngpt_ds GPT", "ngpt_ds", "gpt"),
)


def flash_attn_stand_in() -> types.ModuleType:
    """A `flash_attn` module whose two functions compute flash-attn's result with torch SDPA.

    flash-attn takes q, k, v as [B, T, H, head_dim] (SDPA: [B, H, T, head_dim]) and returns
    the output in q's layout."""

    def flash_attn_func(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        dropout_p: float = 0.0,
        softmax_scale: float | None = None,
        causal: bool = False,
        window_size: tuple[int, int] = (-1, -1),
        alibi_slopes: torch.Tensor | None = None,
        deterministic: bool = False,
        **_: object,
    ) -> torch.Tensor:
        if tuple(window_size) != (-1, -1) or alibi_slopes is not None:
            raise NotImplementedError("the SDPA stand-in supports neither local windows nor ALiBi")
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            dropout_p=dropout_p,
            is_causal=causal,
            scale=softmax_scale,
        )
        return y.transpose(1, 2)

    def flash_attn_qkvpacked_func(qkv: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        q, k, v = qkv.unbind(dim=2)  # [B, T, 3, H, head_dim]
        return flash_attn_func(q, k, v, *args, **kwargs)

    module = types.ModuleType("flash_attn")
    module.flash_attn_func = flash_attn_func
    module.flash_attn_qkvpacked_func = flash_attn_qkvpacked_func
    return module


def load_official(path: str) -> types.ModuleType:
    """Import the official model.py from `path` (a checkout or the file) with flash-attn stood in."""
    source = Path(path)
    if source.is_dir():
        source = source / "model.py"
    if not source.is_file():
        raise FileNotFoundError(f"--official {path}: no model.py there; pass a checkout of NVIDIA/ngpt")
    # Importing a file runs it: only a model.py whose text names NVIDIA/ngpt's config is imported (a train.py
    # passed by mistake trained, and any .py ran its top level, before the refusal below).
    not_ngpt = ValueError(
        f"--official {path}: {source} is not NVIDIA/ngpt's model.py (no GPT, or a GPTConfig without "
        "use_nGPT and base_scale); pass a checkout of NVIDIA/ngpt"
    )
    if source.name != "model.py":
        raise ValueError(
            f"--official {path}: {source} is not a model.py (not imported); pass a checkout of NVIDIA/ngpt"
        )
    text = source.read_text(encoding="utf-8", errors="replace")
    if not all(name in text for name in ("GPTConfig", "use_nGPT", "base_scale")):
        raise not_ngpt
    previous = sys.modules.get("flash_attn")
    sys.modules["flash_attn"] = flash_attn_stand_in()
    try:
        spec = importlib.util.spec_from_file_location("ngpt_official_model", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as error:  # its own imports, its syntax: any failure of someone else's file
        raise ValueError(f"--official {path}: importing {source} failed ({type(error).__name__}: {error})") from None
    finally:
        if previous is None:
            # model.py bound the functions at import; drop the stand-in so nothing else sees it
            del sys.modules["flash_attn"]
        else:
            sys.modules["flash_attn"] = previous
    # Another GPT's model.py (nanoGPT's has GPT and GPTConfig too) fails only in the first step, after the
    # engines are built: check for the nGPT fields official_step passes.
    fields = getattr(getattr(module, "GPTConfig", None), "__dataclass_fields__", {})
    if not hasattr(module, "GPT") or not {"use_nGPT", "base_scale"} <= set(fields):
        raise not_ngpt
    return module


@torch.no_grad()
def official_normalize_matrices(model: torch.nn.Module) -> None:
    """The official train.py's normalize_matrices: every matrix's d_model vectors to unit norm, in fp32
    (embeddings, the head, q/k/v and the MLP input rows; the attention and MLP output columns)."""

    def renorm(weight: torch.Tensor, dim: int) -> None:
        w = weight.float()
        weight.copy_((w / w.norm(p=2, dim=dim, keepdim=True)).to(weight.dtype))

    renorm(model.transformer.wte.weight, 1)
    renorm(model.lm_head.weight, 1)
    for block in model.transformer.h:
        for name in ("query", "key", "value", "c_fc"):
            renorm(getattr(block, name).weight, 1)
        for name in ("att_c_proj", "mlp_c_proj"):
            renorm(getattr(block, name).weight, 0)


def official_step(
    official: types.ModuleType, arch: str, shape: dict, batch: int, clock: Callable[[], float]
) -> Callable[[], float]:
    """One training step of the official model as its train.py runs it; returns its seconds."""
    use_ngpt = int(arch == "ngpt")
    config = official.GPTConfig(
        block_size=shape["seq_len"],
        vocab_size=shape["vocab_size"],
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        n_embd=shape["n_embd"],
        # train.py: base_scale 1/sqrt(n_embd) for nGPT, 0.02 for GPT; weight decay 0 and 0.1
        base_scale=1.0 / math.sqrt(shape["n_embd"]) if use_ngpt else 0.02,
        use_nGPT=use_ngpt,
        dropout=0.0,
        bias=False,
    )
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # its parameter counts
        model = official.GPT(config)
        optimizer = model.configure_optimizers(0.0 if use_ngpt else 0.1, 1e-3, (0.9, 0.95), "cpu")
    if use_ngpt:
        official_normalize_matrices(model)
    tokens = torch.randint(0, shape["vocab_size"], (batch, shape["seq_len"] + 1))
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # as its get_batch makes them

    def step() -> float:
        start = clock()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if use_ngpt:
            official_normalize_matrices(model)
        return clock() - start

    return step


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(
    official: types.ModuleType,
    shape: dict,
    batch: int,
    rounds: int,
    warmup: int,
    ds_path: str,
    clock: str,
    compiled: bool = False,
    flash_compiled: bool = False,
) -> dict:
    from engines import load_bench_ds, with_flash_attention

    from ngpt_ds.train.ds_config import precision_of

    timer = time.process_time if clock == "cpu" else time.perf_counter
    precision = precision_of(load_bench_ds(ds_path))  # of ngpt_ds's engines (the official side: bf16)
    steps = {
        label: official_step(official, arch, shape, batch, timer)
        if side == "official"
        else make_step(arch, shape, batch, ds_path, compiled=False, clock=timer)
        for label, side, arch in STEPS
    }
    if compiled:
        for arch, name in (("ngpt", "nGPT"), ("gpt", "GPT")):
            steps[f"ngpt_ds {name} compiled"] = make_step(arch, shape, batch, ds_path, compiled=True, clock=timer)
    if flash_compiled:
        steps[FLASH_STEP] = with_flash_attention(make_step("ngpt", shape, batch, ds_path, compiled=True, clock=timer))
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {label: [] for label in steps}
    labels = list(steps)
    for round_index in range(rounds):
        # each round starts one step later, so no step always follows the same neighbour
        start = round_index % len(labels)
        for label in labels[start:] + labels[:start]:
            times[label].append(steps[label]())
    tokens = batch * shape["seq_len"]

    def per_round(numerator: str, denominator: str) -> dict:
        """numerator's tokens/s over denominator's, per round."""
        return spread([d / n for n, d in zip(times[numerator], times[denominator])])

    ratios = {
        # speedups: tokens/s of the first over the second
        "ngpt_ds nGPT / official nGPT": per_round("ngpt_ds nGPT", "official nGPT"),
        "ngpt_ds nGPT / official GPT": per_round("ngpt_ds nGPT", "official GPT"),
        "ngpt_ds GPT / official GPT": per_round("ngpt_ds GPT", "official GPT"),
        # step-time costs of nGPT over GPT: ms of nGPT over ms of GPT
        "nGPT/GPT ms, ngpt_ds": per_round("ngpt_ds GPT", "ngpt_ds nGPT"),
        "nGPT/GPT ms, official": per_round("official GPT", "official nGPT"),
    }
    if compiled:
        ratios["ngpt_ds nGPT compiled / official nGPT"] = per_round("ngpt_ds nGPT compiled", "official nGPT")
        ratios["ngpt_ds nGPT compiled / official GPT"] = per_round("ngpt_ds nGPT compiled", "official GPT")
        ratios["nGPT/GPT ms, ngpt_ds compiled"] = per_round("ngpt_ds GPT compiled", "ngpt_ds nGPT compiled")
    if flash_compiled:
        ratios[f"{FLASH_STEP} / official nGPT"] = per_round(FLASH_STEP, "official nGPT")
        ratios[f"ngpt_ds nGPT compiled / {FLASH_STEP}"] = per_round("ngpt_ds nGPT compiled", FLASH_STEP)
    return {
        "shape": shape,
        "batch": batch,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "clock": clock,
        "precision": precision,
        "steps": {
            label: {"ms": 1e3 * statistics.median(t), "tokens_per_s": tokens / statistics.median(t)}
            for label, t in times.items()
        },
        "ratios": ratios,
    }


def table(result: dict) -> str:
    lines = [f"ngpt_ds in {result['precision']}, the official code in bf16 autocast", ""]
    lines += ["| step | ms | tokens/s |", "|---|---|---|"]
    lines += [f"| {label} | {s['ms']:.1f} | {s['tokens_per_s']:,.0f} |" for label, s in result["steps"].items()]
    lines += ["", "| ratio | median | min | max |", "|---|---|---|---|"]
    lines += [
        f"| {name} | **{r['median']:.2f}** | {r['min']:.2f} | {r['max']:.2f} |" for name, r in result["ratios"].items()
    ]
    return "\n".join(lines)


def parse_shape(text: str) -> dict[str, int]:
    """--shape's key=value list over SHAPE's keys and batch, as positive integers. A malformed item was
    reported without the option's name ('error: not enough values to unpack (expected 2, got 1)')."""
    shape = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in (*SHAPE, "batch"):
            raise ValueError(
                f"--shape {text!r}: {item!r} is not key=value with a key of {', '.join([*SHAPE, 'batch'])}"
            )
        try:
            shape[key] = int(value)
        except ValueError:
            raise ValueError(f"--shape {text!r}: {key}={value!r} is not an integer") from None
        if shape[key] < 1:
            raise ValueError(f"--shape {text!r}: {key} must be at least 1, got {shape[key]}")
    return {**SHAPE, **shape}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", required=True, help="a checkout of NVIDIA/ngpt, or its model.py")
    parser.add_argument("--rounds", type=count(1), default=10, help="timed rounds of the four steps")
    parser.add_argument("--warmup", type=count(0), default=2, help="untimed rounds first")
    parser.add_argument(
        "--shape",
        default=",".join(f"{k}={v}" for k, v in {**SHAPE, "batch": BATCH}.items()),
        help="comma list of key=value (n_layer, n_embd, n_head, seq_len, vocab_size, batch)",
    )
    parser.add_argument("--ds", default=str(REPO / "ds_configs/zero2.json"), help="DeepSpeed JSON of ngpt_ds's side")
    parser.add_argument("--compile", action="store_true", help="also time ngpt_ds's models through torch.compile")
    parser.add_argument(
        "--flash-compiled",
        action="store_true",
        help="with --compile: also compiled ngpt_ds nGPT with SDPA's flash attention at every context",
    )
    add_timing_arguments(parser)
    parser.add_argument("--json", type=json_file, help="write the results here too")
    parser.add_argument("--docs", action="store_true", help="also write the results into docs/benchmarks.md")
    args = parser.parse_args()
    if not apply_timing_arguments(args):
        return 2
    if args.flash_compiled and not args.compile:
        parser.error("--flash-compiled compares two compiled steps: add --compile")
    from engines import refuse_gpu

    if refuse_gpu(
        "bench/peer_step.py",
        "the official side runs on the CPU in bf16 autocast; on a GPU ngpt_ds's engines would run there and the "
        "ratios would set a GPU against a CPU",
    ):
        return 2
    try:
        shape = parse_shape(args.shape)
        batch = shape.pop("batch", BATCH)
        official = load_official(args.official)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # The official side trains in bf16 whatever the CPU: ngpt_ds's side keeps the JSON's bf16 too, or the
    # ratios would set its fp32 kernels against torch's reference bf16 one (bench/engines.py).
    os.environ["NGPT_DS_CPU_BF16"] = "1"
    from engines import load_bench_ds

    from ngpt_ds.train.ds_config import cpu_has_native_bf16, precision_of

    precision = precision_of(load_bench_ds(args.ds))
    if precision != "bf16":
        print(
            f"warning: {args.ds} trains ngpt_ds in {precision} while the official side "
            "runs bf16 autocast: the ratios compare two precisions, not two implementations",
            file=sys.stderr,
        )
    elif not torch.cuda.is_available() and not cpu_has_native_bf16():
        print(
            "warning: this CPU has no native bf16 matmul (AVX512 or AMX): both sides run torch's reference bf16 "
            "kernel, some 35x slower than fp32, so the ratios measure that kernel more than the models",
            file=sys.stderr,
        )
    init_process_group(distributed.discover({}), timeout_s=600)
    result = measure(
        official, shape, batch, args.rounds, args.warmup, args.ds, args.clock, args.compile, args.flash_compiled
    )
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.docs:
        from report import command_line, machine, update_section

        update_section(
            "peer_step",
            # the checkout's place on this machine says nothing to a reader
            f"Command: `{command_line().replace(args.official, 'NGPT_CHECKOUT')}`  \nMachine: {machine()}, {result['threads']} threads, {args.clock} clock; "
            f"medians of {args.rounds} interleaved rounds; shape {shape}, batch {batch}.\n\n" + table(result),
        )
    return 0


if __name__ == "__main__":
    from ngpt_ds.distributed import exit_process

    sys.exit(exit_process(main()))  # no interpreter teardown after a process group (see there)
