"""The Python half of bench/gpu_check.sh: one check per call, one result line in --result.

    torchrun --nproc_per_node N bench/gpu_check_worker.py hook --ds ds_configs/zero2.json --workdir DIR --result FILE
    python bench/gpu_check_worker.py sphere --model exports/x --result FILE
    python bench/gpu_check_worker.py throughput --result FILE
    python bench/gpu_check_worker.py flash --result FILE

Each writes "PASS|FAIL|SKIPPED <details>" to --result (rank 0) and exits 0; a crash leaves no
result, and the shell script reports the log's last line instead. Without a GPU (the script's
--dry-run) the same code runs on CPU and gloo at toy sizes, and what only a GPU can show is
SKIPPED; that checks the plumbing, not the GPU path.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402

from ngpt_ds.cli import default_accelerator  # noqa: E402

GPU = torch.cuda.is_available()
default_accelerator()


def write_result(path: str, status: str, details: str) -> None:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        Path(path).write_text(f"{status} {details}\n")


# ---- hook: the hypersphere hook's collectives under the engine's backend -------------------------


class CollectiveLog:
    """Records the device of every tensor that project code (ngpt_ds.*) passes to torch.distributed."""

    NAMES = ("all_reduce", "all_gather", "broadcast", "reduce_scatter_tensor", "all_gather_into_tensor")

    def __init__(self):
        import torch.distributed as dist

        self.devices: list[str] = []
        for name in self.NAMES:
            original = getattr(dist, name)
            setattr(dist, name, self._wrap(original))

    def _wrap(self, original):
        def call(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("ngpt_ds"):
                tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
                self.devices += [t.device.type for t in tensors]
            return original(*args, **kwargs)

        return call


def hook_check(args) -> None:
    import torch.distributed as dist

    from ngpt_ds import distributed
    from ngpt_ds.model import ModelConfig, build_model, sphere_matrices
    from ngpt_ds.train.builder import init_process_group, start_engine
    from ngpt_ds.train.config import RunConfig, TrainConfig
    from ngpt_ds.train.ds_config import check_ds_config, load_ds_config, precision_of, zero_stage_of
    from ngpt_ds.train.hypersphere import HypersphereHook

    env = distributed.discover()
    log = CollectiveLog()  # before the process group: the trainer's own modules bind dist lazily
    init_process_group(env, timeout_s=120)
    backend = dist.get_backend()
    ds = load_ds_config(args.ds)
    ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"] = 4, 1
    ds.pop("train_batch_size", None)
    from deepspeed.accelerator import get_accelerator

    check_ds_config(
        ds,
        world_size=env.world_size,
        tensor_parallel=1,
        source=args.ds,
        fp16_supported=bool(get_accelerator().is_fp16_supported()),
        bf16_supported=bool(get_accelerator().is_bf16_supported()),
    )
    size = (
        dict(n_layer=2, n_embd=256, n_head=4, seq_len=256) if GPU else dict(n_layer=2, n_embd=32, n_head=2, seq_len=32)
    )
    model_cfg = ModelConfig(arch="ngpt", vocab_size=1021, **size).validate()  # odd vocabulary: rows straddle
    run = RunConfig(
        config_source="gpu_check",
        model=model_cfg,
        train=TrainConfig(max_steps=args.steps, lr=1e-2).resolve("ngpt").validate(),
        deepspeed=ds,
        deepspeed_source=args.ds,
        data_dir="",
        out_dir="",
    )
    engine = start_engine(run)
    hook = HypersphereHook(engine)
    forced = ""
    if env.world_size == 1:
        # One rank holds every piece whole, so the hook skips its all-reduce. Route it through the
        # world group anyway, so the collective and its device copies run on this backend.
        try:
            for unit in hook.units:
                unit.group = dist.group.WORLD
            forced = " (world size 1: the hook's all-reduce forced through the world group)"
        except AttributeError as err:
            forced = f" (world size 1: could not force the hook's all-reduce: {err})"
    hook.normalize_now()
    generator = torch.Generator().manual_seed(1 + env.rank)
    tokens = torch.randint(0, model_cfg.vocab_size, (4, model_cfg.seq_len + 1), generator=generator)
    tokens = tokens.to(engine.device)  # one batch, again and again: the loss must fall
    losses, deviations = [], []
    for _ in range(args.steps):
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        deviations.append(hook.max_deviation())
    checkpoint = Path(args.workdir) / f"checkpoint-{Path(args.ds).stem}"  # the same path on every rank
    engine.save_checkpoint(str(checkpoint), tag="check")
    dist.barrier()
    consolidated = float("nan")
    if env.rank == 0:  # DeepSpeed's own consolidation of the ZeRO shards (what export uses)
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag="check")
        consolidated = (
            torch.stack(
                [
                    (torch.linalg.vector_norm(state[m.name].float(), dim=m.norm_dim) - 1).abs().max()
                    for m in sphere_matrices(build_model(model_cfg))
                ]
            )
            .max()
            .item()
        )
    dist.barrier()
    masters = {str(piece.values.device.type) for unit in hook.units for piece in unit.pieces}
    devices = sorted(set(log.devices))
    comm = engine.device.type if hasattr(engine.device, "type") else torch.device(engine.device).type
    problems = []
    if GPU and backend != "nccl":
        problems.append(f"backend {backend}, not nccl")
    if hook.all_reduces == 0:
        problems.append("the hook's all-reduce never ran" + (forced or ""))
    if any(d != comm for d in log.devices):
        problems.append(f"project collectives on {devices}, not only the engine's device {comm}")
    if not all(math.isfinite(x) for x in losses) or losses[-1] >= losses[0]:
        problems.append(f"losses {losses[0]:.3f} -> {losses[-1]:.3f}")
    if not max(deviations) <= 1e-5:
        problems.append(f"hook max norm deviation {max(deviations):.2e}")
    if env.rank == 0 and not consolidated <= 1e-5:
        problems.append(f"consolidated fp32 masters off the sphere by {consolidated:.2e}")
    n_matrices = len(sphere_matrices(engine.module))
    details = (
        f"{args.ds} ZeRO {zero_stage_of(ds)} {precision_of(ds)}, {env.world_size} rank(s) on {backend}, "
        f"{type(engine.optimizer).__name__}, masters on {sorted(masters)}, project collectives on "
        f"{devices or 'none'} ({len(log.devices)} tensors), {hook.all_reduces} hook all-reduces{forced}, "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, max norm deviation {max(deviations):.1e} (hook), "
        f"{consolidated:.1e} (consolidated, {n_matrices} matrices)"
    )
    write_result(
        args.result, "FAIL" if problems else "PASS", ("; ".join(problems) + " | " if problems else "") + details
    )
    dist.barrier()
    dist.destroy_process_group()


# ---- sphere: an exported (consolidated) model --------------------------------------------------


def sphere_check(args) -> None:
    from ngpt_ds.infer import load
    from ngpt_ds.model import max_norm_deviation, sphere_matrices

    loaded = load(args.model, device="cpu")
    deviation = max_norm_deviation(loaded.model)
    n = len(sphere_matrices(loaded.model))
    status = "PASS" if n and deviation <= 1e-5 else "FAIL"
    write_result(
        args.result, status, f"{args.model}: {n} sphere matrices, fp32 max | ||w|| - 1 | = {deviation:.2e} (limit 1e-5)"
    )


# ---- throughput: tokens/s and MFU of the 0.5B layer shape at a short depth ------------------------


def cuda_matmul_peak(dtype: torch.dtype, size: int = 8192, iters: int = 30) -> float:
    a = torch.randn(size, size, dtype=dtype, device="cuda")
    b = torch.randn(size, size, dtype=dtype, device="cuda")
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * iters / (time.perf_counter() - start)


def throughput_check(args) -> None:
    import torch.distributed as dist
    from engines import shape_engine
    from step_time import SHAPES

    from ngpt_ds import distributed
    from ngpt_ds.model import training_flops_per_token
    from ngpt_ds.train.builder import init_process_group
    from ngpt_ds.train.metrics import peak_flops_per_device

    shape_name = "0.5b-short" if GPU else "micro"
    shape, batch = SHAPES[shape_name]
    batch = args.micro_batch or (8 if GPU else batch)
    init_process_group(distributed.discover({}), timeout_s=120)
    bench = shape_engine("ngpt", shape, batch, args.ds, source="gpu_check")
    engine, model_cfg = bench.engine, bench.model
    tokens = torch.randint(0, model_cfg.vocab_size, (batch, model_cfg.seq_len + 1)).to(engine.device)

    def step():
        _, loss = engine(tokens[:, :-1], tokens[:, 1:])
        engine.backward(loss)
        engine.step()
        return loss

    for _ in range(3):
        step()
    if GPU:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()
    if GPU:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens_per_s = batch * model_cfg.seq_len * args.steps / seconds
    achieved = training_flops_per_token(model_cfg) * tokens_per_s
    sheet, source = peak_flops_per_device(None, torch.bfloat16)
    details = (
        f"{shape_name} (n_layer {shape['n_layer']}, d {shape['n_embd']}, seq {shape['seq_len']}, "
        f"vocab {shape['vocab_size']}), micro-batch {batch}, {args.ds}: {tokens_per_s:,.0f} tokens/s, "
        f"{achieved / 1e12:.1f} TFLOP/s, MFU {100 * achieved / sheet:.1f}% of {sheet / 1e12:.0f} TFLOP/s "
        f"({source})"
    )
    if GPU:
        measured = cuda_matmul_peak(torch.bfloat16)
        details += f", {100 * achieved / measured:.1f}% of a measured bf16 matmul ({measured / 1e12:.0f} TFLOP/s)"
    ok = math.isfinite(tokens_per_s) and tokens_per_s > 0 and math.isfinite(loss.item())
    write_result(args.result, "PASS" if ok else "FAIL", details)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"tokens_per_s": tokens_per_s, "achieved_flops": achieved, "peak_flops": sheet, "peak_source": source}
            )
            + "\n"
        )
    dist.destroy_process_group()


# ---- flash: which SDPA kernel the model's attention runs ------------------------------------------


def flash_check(args) -> None:
    """Profile one forward and backward of the 0.5B layer shape in bf16; PASS if a CUDA flash SDPA op ran.

    Without a GPU (--dry-run) the micro shape runs on CPU, to exercise this code, and the result is SKIPPED.
    """
    from step_time import SHAPES
    from torch.profiler import ProfilerActivity, profile

    from ngpt_ds.model import ModelConfig, build_model

    device = "cuda" if GPU else "cpu"
    shape, _ = SHAPES["0.5b-short" if GPU else "micro"]
    model = build_model(ModelConfig(arch="ngpt", **shape).validate()).to(device, torch.bfloat16)
    tokens = torch.randint(0, shape["vocab_size"], (2, shape["seq_len"] + 1), device=device)

    def forward_backward():
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        if GPU:
            torch.cuda.synchronize()

    forward_backward()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if GPU else [])
    with profile(activities=activities) as prof:
        forward_backward()
    names = {e.key for e in prof.key_averages()}
    sdpa = sorted(n for n in names if n.startswith("aten::") and ("scaled_dot_product" in n or "attention" in n))
    if not GPU:
        write_result(
            args.result, "SKIPPED", f"no CUDA device (flash attention is a CUDA kernel); on CPU SDPA ran {sdpa}"
        )
        return
    flash = sorted(n for n in names if "flash" in n.lower() and "for_cpu" not in n)
    write_result(
        args.result,
        "PASS" if flash else "FAIL",
        f"bf16 0.5b-short forward+backward: flash ops/kernels {[n[:60] for n in flash[:3]] or 'none'}; SDPA ops {sdpa}",
    )


#: compiled and eager bf16 runs round differently; beyond this relative loss difference they trained differently
COMPILE_LOSS_REL_TOL = 0.02


def compare_check(args: argparse.Namespace) -> None:
    """The trainer's eager run and its --compile twin: the same logged steps, losses within 2%."""
    eager, compiled = ({r["step"]: r["train/loss"] for r in _metrics(Path(run))} for run in args.runs)
    if not eager or sorted(compiled) != sorted(eager):
        write_result(args.result, "FAIL", f"logged steps differ: eager {sorted(eager)}, compiled {sorted(compiled)}")
        return
    worst = max(eager, key=lambda step: abs(compiled[step] - eager[step]) / abs(eager[step]))
    rel = abs(compiled[worst] - eager[worst]) / abs(eager[worst])
    write_result(
        args.result,
        "PASS" if rel <= COMPILE_LOSS_REL_TOL else "FAIL",
        f"{len(eager)} logged steps; largest difference at step {worst}: compiled {compiled[worst]:.4f}, "
        f"eager {eager[worst]:.4f} ({rel:.2%}; at most {COMPILE_LOSS_REL_TOL:.0%})",
    )


def _metrics(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if "train/loss" in r]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "check",
        choices=["hook", "sphere", "throughput", "flash", "compare"],
        help="hook: the hypersphere hook's collectives and masters under --ds; sphere: an export's matrices on "
        "the sphere; throughput: tokens/s and MFU of the 0.5B layer shape; flash: which SDPA kernel attention "
        "runs; compare: an eager and a compiled trainer run's losses",
    )
    parser.add_argument("--result", required=True, help="file for the one-line result")
    parser.add_argument("--ds", default=str(REPO / "ds_configs/zero2.json"), help="hook, throughput: DeepSpeed JSON")
    parser.add_argument("--steps", type=int, default=10, help="hook, throughput: training steps (default 10)")
    parser.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="throughput: sequences per step (default: 8 on a GPU, 2 on the CPU)",
    )
    parser.add_argument("--model", help="sphere (required): an exported folder")
    # No default: the checkpoint went into the working directory, the repository's root when run as above.
    parser.add_argument("--workdir", help="hook (required): a folder for its checkpoint")
    parser.add_argument("--json", help="throughput: also write the numbers here")
    parser.add_argument(
        "--runs", nargs=2, metavar=("EAGER", "COMPILED"), help="compare (required): two trainer --out folders"
    )
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    needs = {"hook": ("workdir", "--workdir DIR"), "sphere": ("model", "--model DIR"), "compare": ("runs", "--runs")}
    if args.check in needs and getattr(args, needs[args.check][0]) is None:
        parser.error(f"{args.check} needs {needs[args.check][1]}")
    checks = {"hook": hook_check, "sphere": sphere_check, "throughput": throughput_check, "flash": flash_check}
    checks["compare"] = compare_check
    checks[args.check](args)
    return 0


if __name__ == "__main__":
    from ngpt_ds.distributed import exit_process

    sys.exit(exit_process(main()))  # no interpreter teardown after a process group (see there)
