"""Memory and step time of LoRA fine-tuning: nGPT's sphere LoRA (low-rank and whole-matrix forms) against PEFT's plain
LoRA on the GPT baseline, side by side.

    python bench/lora_memory.py [--layers 4] [--embd 1024] [--seq-len 256] [--batch 2] [--rank 8] [--rounds 3]
                                [--json FILE] [--docs]

One process builds, from the same seed and shape, the transformers model of each mode with PEFT's LoRA on q/k/v,
attention out, MLP up/gate and down (ngpt_ds.hf.lora.sphere_lora), and alternates their training steps as
transformers' Trainer takes them (forward with labels, backward, AdamW step over the adapters), so every mode sees the
same machine state:

- gpt plain: the GPT baseline, PEFT's LoRA (x W^T + x A^T B^T);
- ngpt low-rank: nGPT, Norm(W + BA) computed without forming W + BA (ngpt_ds/hf/lora_low_rank.py);
- ngpt whole: nGPT, Norm(W + BA) formed whole in each forward (SphereLoraProjection.whole_matrix, the earlier form).

Per mode, the median of the rounds: held (RSS the forward keeps for the backward), peak (highest RSS during forward
and backward above the RSS before the step) and step seconds; then the ratios to gpt plain and whole / low-rank.
Memory is process RSS, so the script restarts itself with MALLOC_MMAP_THRESHOLD_ (bench/rss_step.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import rss_step  # noqa: E402
from report import command_line, count, json_file, machine, update_section  # noqa: E402

MODES = ("gpt plain", "ngpt low-rank", "ngpt whole")
TARGETS = ["qkv", "out", "up_gate", "down"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=count(1), default=4, help="transformer blocks (default 4)")
    p.add_argument("--embd", type=count(8), default=1024, help="model width d (default 1024)")
    p.add_argument("--heads", type=count(1), default=8, help="attention heads (default 8)")
    p.add_argument("--seq-len", type=count(1), default=256, help="context length (default 256)")
    p.add_argument("--batch", type=count(1), default=2, help="sequences per step (default 2)")
    p.add_argument("--vocab", type=count(2), default=4096, help="vocabulary size (default 4096)")
    p.add_argument("--rank", type=count(1), default=8, help="LoRA rank r (default 8)")
    p.add_argument("--rounds", type=count(1), default=3, help="measured steps per mode, after one warm-up step")
    p.add_argument("--json", type=json_file, default=None, help="also write the results here")
    p.add_argument("--docs", action="store_true", help="also write the result into docs/benchmarks.md")
    return p.parse_args()


def build(args, mode: str):
    """(PEFT model, AdamW over its adapters) of `mode`, B drawn nonzero so that Norm(W + BA) is no identity."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ngpt_ds.hf.configuration_ngpt import CONFIGS
    from ngpt_ds.hf.lora import sphere_lora
    from ngpt_ds.hf.modeling_ngpt import MODELS
    from ngpt_ds.model import ModelConfig

    arch = mode.split()[0]
    config = ModelConfig(
        arch=arch, vocab_size=args.vocab, n_layer=args.layers, n_embd=args.embd, n_head=args.heads,
        seq_len=args.seq_len,
    ).validate()  # fmt: skip
    torch.manual_seed(0)
    model = MODELS[arch](CONFIGS[arch].from_model_config(config))
    lora = sphere_lora(LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS))
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    return peft_model, torch.optim.AdamW(trainable, lr=1e-4)


def step(model, optimizer, ids, whole: bool) -> dict:
    """One Trainer-like step: its seconds, held and peak memory (MiB) and loss."""
    from ngpt_ds.hf.lora import SphereLoraProjection

    SphereLoraProjection.whole_matrix = whole
    optimizer.zero_grad(set_to_none=False)
    before = rss_step._status_kib("VmRSS")  # noqa: SLF001  (the bench scripts' shared reading)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    start = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    held = rss_step._status_kib("VmRSS") - before  # noqa: SLF001
    loss.backward()
    peak = rss_step._status_kib("VmHWM") - before  # noqa: SLF001
    optimizer.step()
    return {"step_s": time.perf_counter() - start, "held_mib": held / 1024, "peak_mib": peak / 1024}


def _ratio(a: float, b: float) -> str:
    """a / b to two decimals; "n/a" where b is 0 (a tiny shape's RSS need not rise)."""
    return f"{a / b:.2f}" if b > 0 else "n/a"


def main() -> int:
    args = parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != rss_step.MMAP_THRESHOLD:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": rss_step.MMAP_THRESHOLD}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    built = {mode: build(args, mode) for mode in MODES}
    samples: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for round_ in range(args.rounds + 1):
        for mode in MODES:
            result = step(*built[mode], ids, whole=mode == "ngpt whole")
            if round_:  # round 0 warms up
                samples[mode].append(result)
    rows = {
        mode: {key: statistics.median(s[key] for s in samples[mode]) for key in ("held_mib", "peak_mib", "step_s")}
        for mode in MODES
    }
    setting = (
        f"{args.layers} layers, d {args.embd}, {args.heads} heads, context {args.seq_len}, batch {args.batch}, "
        f"vocab {args.vocab}, LoRA r {args.rank} on {', '.join(TARGETS)}, fp32, {args.rounds} rounds (median), "
        f"{rss_step.RSS_NOTE}"
    )
    lines = [
        setting,
        "",
        "| mode | held MiB | peak MiB | step s | peak / gpt plain | step / gpt plain |",
        "|---|---|---|---|---|---|",
    ]
    base = rows["gpt plain"]
    for mode, row in rows.items():
        lines.append(
            f"| {mode} | {row['held_mib']:.0f} | {row['peak_mib']:.0f} | {row['step_s']:.3f} | "
            f"{_ratio(row['peak_mib'], base['peak_mib'])} | {_ratio(row['step_s'], base['step_s'])} |"
        )
    whole, low = rows["ngpt whole"], rows["ngpt low-rank"]
    lines += [
        "",
        f"whole / low-rank: held {_ratio(whole['held_mib'], low['held_mib'])}, "
        f"peak {_ratio(whole['peak_mib'], low['peak_mib'])}, "
        f"step {_ratio(whole['step_s'], low['step_s'])}",
    ]
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps({"setting": setting, "rows": rows}, indent=2) + "\n")
    if args.docs:
        update_section(
            "lora_memory",
            "## LoRA memory: sphere LoRA against plain LoRA\n\n"
            f"Command: `{command_line()}`  \nMachine: {machine()}  \n" + "\n".join(lines),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
