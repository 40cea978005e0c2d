"""The paper's headline claim at small scale: tokens nGPT needs to reach GPT's final validation loss.

    python bench/convergence.py                        # default: ~30 min on a 2-core CPU
    python bench/convergence.py --shape ngpt_0.5b --steps 20000 --ds ds_configs/zero1.json --data DIR  # GPUs

Both models train through the real trainer (launch/train.py, DeepSpeed engine) on the same
prepared data with the same shape, batch, context and token budget, each at a small LR
sweep. For each model the run with the lowest final validation loss is its best. The
speedup is the paper's measure (PAPER §3.1, Fig. 1): GPT's tokens to its final validation
loss divided by the tokens nGPT needs to reach that loss (evaluations interpolated
linearly). The wall-time ratio is reported next to it, because nGPT's steps cost more.
Writes <out>/convergence.json, convergence.md and convergence.png (validation loss vs tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_LRS = {"ngpt": "3e-3,6e-3,1.2e-2,2.4e-2", "gpt": "1e-3,3e-3,6e-3,1.2e-2"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shape",
        default="ngpt_tiny",
        help="preset whose model shape both models use (arch is set per run); default ngpt_tiny",
    )
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (same for both models)")
    parser.add_argument("--lrs-ngpt", default=DEFAULT_LRS["ngpt"], help="comma-separated nGPT learning rates")
    parser.add_argument("--lrs-gpt", default=DEFAULT_LRS["gpt"], help="comma-separated GPT learning rates")
    parser.add_argument("--gpt-warmup", type=int, default=None, help="GPT warmup steps (default: steps // 10)")
    parser.add_argument("--eval-interval", type=int, default=25, help="evaluate every N steps")
    parser.add_argument("--eval-batches", type=int, default=8, help="validation micro-batches per rank")
    parser.add_argument("--ds", default=str(REPO / "ds_configs/zero2.json"), help="DeepSpeed JSON (batch, precision)")
    parser.add_argument("--data", help="prepared dataset (default: the default corpus)")
    parser.add_argument("--ranks", type=int, default=1, help="ranks per run (torchrun)")
    parser.add_argument("--out", default=str(REPO / "bench/results/convergence"), help="output directory")
    parser.add_argument("--docs", action="store_true", help="also write the results into docs/benchmarks.md")
    return parser.parse_args(argv)


def run_one(args, arch: str, lr: float, shape: dict, data_dir: str, out: Path) -> dict:
    run_dir = out / "runs" / f"{arch}_lr{lr:g}"
    train = {
        "max_steps": args.steps,
        "lr": lr,
        "eval_interval": args.eval_interval,
        "eval_batches": args.eval_batches,
        "log_interval": max(1, args.eval_interval),
        "checkpoint_interval": 0,
        "keep_checkpoints": 1,
    }
    if arch == "gpt" and args.gpt_warmup is not None:
        train["warmup_steps"] = args.gpt_warmup
    config = run_dir / "config.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({"model": {**shape, "arch": arch}, "train": train}))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(args.ranks),
        "--master_port",
        str(29500 + os.getpid() % 1000),
        str(REPO / "launch/train.py"),
        "--config",
        str(config),
        "--deepspeed_config",
        args.ds,
        "--data",
        data_dir,
        "--out",
        str(run_dir / "out"),
        "--resume",
        "none",
        "--no-progress",
    ]
    if (run_dir / "out" / "summary.json").exists():  # finished earlier: reuse (delete the dir to rerun)
        summary = json.loads((run_dir / "out" / "summary.json").read_text())
    else:
        if (run_dir / "out").exists():
            subprocess.run(["rm", "-rf", str(run_dir / "out")], check=True)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if args.ranks > 1 and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.ranks))
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
            raise SystemExit(f"run {arch} lr {lr:g} failed ({proc.returncode}); command: {' '.join(cmd)}")
        summary = json.loads((run_dir / "out" / "summary.json").read_text())
        summary["wall_s"] = time.perf_counter() - start
        (run_dir / "out" / "summary.json").write_text(json.dumps(summary, indent=2))
    metrics = [json.loads(line) for line in (run_dir / "out" / "metrics.jsonl").read_text().splitlines()]
    tokens_per_step = summary["tokens"] / summary["step"]
    evals = [(m["step"] * tokens_per_step, m["eval/loss"]) for m in metrics if "eval/loss" in m]
    step_times = [m["throughput/step_time_s"] for m in metrics if "throughput/step_time_s" in m]
    return {
        "arch": arch,
        "lr": lr,
        "final_val_loss": summary["val_loss"],
        "tokens": summary["tokens"],
        "train_seconds": summary["seconds"],
        "mean_step_s": sum(step_times) / len(step_times),
        "eval_curve": evals,
    }


def tokens_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """First token count at which the validation curve reaches `target` (linear between evaluations)."""
    previous = (0.0, float("inf"))
    for tokens, loss in curve:
        if loss <= target:
            t0, l0 = previous
            if l0 == float("inf"):
                return tokens
            return t0 + (tokens - t0) * (l0 - target) / (l0 - loss)
        previous = (tokens, loss)
    return None


def summarize(runs: list[dict]) -> dict:
    best = {
        arch: min((r for r in runs if r["arch"] == arch), key=lambda r: r["final_val_loss"]) for arch in ("ngpt", "gpt")
    }
    target = best["gpt"]["final_val_loss"]
    reach = tokens_to_reach(best["ngpt"]["eval_curve"], target)
    result = {
        "target_val_loss": target,
        "best_lr": {a: best[a]["lr"] for a in best},
        "best_final_val_loss": {a: best[a]["final_val_loss"] for a in best},
        "ngpt_tokens_to_target": reach,
        "gpt_tokens": best["gpt"]["tokens"],
        "token_speedup": best["gpt"]["tokens"] / reach if reach else None,
        "step_time_ratio_ngpt_over_gpt": best["ngpt"]["mean_step_s"] / best["gpt"]["mean_step_s"],
    }
    if reach:
        result["wall_time_speedup"] = result["token_speedup"] / result["step_time_ratio_ngpt_over_gpt"]
    return result


def write_outputs(out: Path, meta: dict, runs: list[dict], result: dict) -> None:
    (out / "convergence.json").write_text(
        json.dumps({"settings": meta, "summary": result, "runs": runs}, indent=2) + "\n"
    )
    lines = ["| model | LR | final val loss | mean step (s) |", "|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["arch"], r["lr"])):
        mark = " **best**" if r["lr"] == result["best_lr"][r["arch"]] else ""
        lines.append(
            f"| {'nGPT' if r['arch'] == 'ngpt' else 'GPT'} | {r['lr']:g}{mark} | "
            f"{r['final_val_loss']:.4f} | {r['mean_step_s']:.3f} |"
        )
    speed = result["token_speedup"]
    lines += [
        "",
        f"GPT's best final validation loss: {result['target_val_loss']:.4f} after "
        f"{result['gpt_tokens'] / 1e6:.2f}M tokens.",
        (
            f"nGPT reaches it after {result['ngpt_tokens_to_target'] / 1e6:.2f}M tokens: **{speed:.2f}x fewer "
            f"tokens**; nGPT steps take {result['step_time_ratio_ngpt_over_gpt']:.2f}x as long, so "
            f"{result['wall_time_speedup']:.2f}x in wall time."
        )
        if speed
        else "nGPT does not reach GPT's final validation loss within the budget.",
    ]
    (out / "convergence.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        best = r["lr"] == result["best_lr"][r["arch"]]
        tokens, losses = zip(*r["eval_curve"])
        ax.plot(
            [t / 1e6 for t in tokens],
            losses,
            color="tab:red" if r["arch"] == "ngpt" else "tab:blue",
            alpha=1.0 if best else 0.3,
            linewidth=2 if best else 1,
            label=f"{'nGPT' if r['arch'] == 'ngpt' else 'GPT'} lr {r['lr']:g}",
        )
    ax.axhline(result["target_val_loss"], color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("tokens (millions)")
    ax.set_ylabel("validation loss")
    ax.set_title(f"nGPT vs GPT, {meta['shape_desc']}")
    ax.set_ylim(top=min(8.0, ax.get_ylim()[1]))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=120)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ngpt_ds.data.default_corpus import ensure_default_dataset
    from ngpt_ds.model.config import load_model_config

    shape_cfg = load_model_config(args.shape)
    shape = {
        k: getattr(shape_cfg, k)
        for k in ("n_layer", "n_embd", "n_head", "seq_len", "mlp_hidden", "vocab_size", "rope_base")
    }
    data_dir = args.data or str(ensure_default_dataset(vocab_size=shape["vocab_size"] or 4096))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for arch, lrs in (("gpt", args.lrs_gpt), ("ngpt", args.lrs_ngpt)):
        for lr in (float(x) for x in lrs.split(",")):
            print(f"training {arch} lr {lr:g} for {args.steps} steps ...", flush=True)
            runs.append(run_one(args, arch, lr, shape, data_dir, out))
            print(f"  final validation loss {runs[-1]['final_val_loss']:.4f}", flush=True)
    meta = {
        "shape": args.shape,
        "steps": args.steps,
        "deepspeed": os.path.basename(args.ds),
        "ranks": args.ranks,
        "data": os.path.basename(data_dir.rstrip("/")),
        "shape_desc": f"{shape['n_layer']} layers, d {shape['n_embd']}, ctx {shape['seq_len']}, {args.steps} steps",
        **shape,
    }
    result = summarize(runs)
    write_outputs(out, meta, runs, result)
    print((out / "convergence.md").read_text())
    if args.docs:
        from report import DOC, command_line, machine, update_section

        plot = os.path.relpath(out / "convergence.png", DOC.parent)
        update_section(
            "convergence",
            f"Command: `{command_line()}`  \nMachine: {machine()}  \n"
            f"Setting: {meta['shape_desc']}, {args.steps} steps per run, {meta['deepspeed']} "
            f"(bf16 working copy with fp32 master weights for both models), {args.ranks} rank(s), "
            f"data {os.path.basename(data_dir)}.\n\n{(out / 'convergence.md').read_text()}\n"
            f"![validation loss vs tokens]({plot})",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
