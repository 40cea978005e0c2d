"""The training loop: steps, evaluation, logging, checkpoints, cooperative shutdown (ngpt_ds.train.job
starts it)."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ngpt_ds import log
from ngpt_ds.data.loader import TokenWindowLoader, validation_batches
from ngpt_ds.data.windows import DeferredFaults
from ngpt_ds.model import count_parameters, training_flops_per_token
from ngpt_ds.parallel import create_groups
from ngpt_ds.parallel.pipeline import PipelineSteps
from ngpt_ds.train import (
    agreement,
    checkpoint,
    divergence,
    ds_compat,
    preflight,
    reshape_convert,
    reshape_plan,
    rng_state,
    universal_check,
)
from ngpt_ds.train.builder import Prepared, TrainOptions, start_engine
from ngpt_ds.train.collectives import all_reduce_on
from ngpt_ds.train.console_format import format_rate, progress_line
from ngpt_ds.train.ds_config import check_engine_agrees, engine_settings, precision_of
from ngpt_ds.train.hypersphere import HypersphereHook
from ngpt_ds.train.metrics import (
    MetricsLogger,
    grad_norm_deepspeed_leaves_out,
    memory_metrics,
    ngpt_health,
    peak_flops_per_device,
)
from ngpt_ds.train.optim import apply_on_resume
from ngpt_ds.train.resume import describe_batch_change
from ngpt_ds.train.run_end import RunEnd
from ngpt_ds.train.startup_peers import peers_watched
from ngpt_ds.train.stopping import StopRequest
from ngpt_ds.train.summary import Summary
from ngpt_ds.train.summary import replace_file as replace_file  # tests import it from here

_log = log.get(__name__)


class Trainer(RunEnd):
    def __init__(self, prepared: Prepared, options: TrainOptions):
        # A rank lost during the startup's collectives: one line on the others, not a traceback (startup_peers.py).
        with peers_watched(dist.get_rank(), prepared.run.train.dist_timeout_s):
            self._start_up(prepared, options)

    def _start_up(self, prepared: Prepared, options: TrainOptions) -> None:
        self.run, self.plan = prepared.run, prepared.plan
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.is_main = self.rank == 0
        self.out_dir = Path(self.run.out_dir)
        self.show_progress = options.progress and self.is_main
        self.groups = create_groups(self.run.train.tensor_parallel_size, self.run.train.sequence_parallel_size)
        self.reshape, self.reused_conversion = prepared.reshape, False
        if self.reshape is not None:  # saved at another data-parallel size: its universal form, made once
            from deepspeed.accelerator import get_accelerator

            self.reused_conversion = reshape_convert.convert(
                self.reshape, torch.device(get_accelerator().current_device_name())
            )
        self.engine = start_engine(self.run, self.groups, load_universal=self.reshape is not None)
        self.ds_settings = engine_settings(self.engine)  # what DeepSpeed really uses, defaults included
        check_engine_agrees(self.ds_settings, self.run.deepspeed, self.plan)
        self.model = self.engine.module
        self.device = self.engine.device
        # Pipeline stages: DeepSpeed's schedule runs each step's micro-batches (ngpt_ds.parallel.pipeline).
        self.pipeline = PipelineSteps(self.engine) if self.run.train.pipeline_parallel_size > 1 else None
        # ZeRO 0 fp32 pipeline: clipped by, and logging, the norm over every stage (None for other engines).
        self.pipeline_grad_norm = ds_compat.clip_pipeline_fp32_gradients(self.engine, lambda: self.grad_norm_wanted)
        self.hook = HypersphereHook(self.engine) if self.run.model.is_ngpt else None
        if self.hook is not None:
            self.hook.normalize_now()

        seq_len, micro = self.run.model.seq_len, self.plan.micro_batch
        dp_rank, dp_size = self.groups.dp_rank, self.groups.dp_size
        if self.pipeline is not None:
            dp_rank, dp_size = self.pipeline.data_parallel()
        # A bad token id read by some ranks only: flagged in the step's all-reduce, then every rank stops.
        self.data_faults = DeferredFaults() if self.world > 1 else None
        self.loader = TokenWindowLoader(
            self.run.data_dir,
            "train",
            seq_len,
            micro,
            dp_rank,
            dp_size,
            self.run.train.seed,
            grad_accum=self.plan.grad_accum,
            faults=self.data_faults,
        )
        self.val_batches = validation_batches(
            self.run.data_dir,
            seq_len,
            micro,
            dp_rank,
            dp_size,
            max_batches=self.run.train.eval_batches,
            faults=self.data_faults,
        )
        self.tokens_per_step = self.plan.global_batch * seq_len
        self.step, self.tokens_seen = 0, 0
        if prepared.resume_from is not None:
            self._resume(prepared.resume_from)

        self.newest_checkpoint: Path | None = prepared.resume_from
        self.metrics = MetricsLogger(self.out_dir, enabled=self.is_main, resume_step=self.step)
        # metrics.jsonl cut back to the resumed step, or not
        self.metrics.stop_if_unwritten(self.device, self._checkpoints_left)
        self.flops_per_token = training_flops_per_token(self.run.model)
        dtype = next(self.model.parameters()).dtype
        self.peak_flops, self.peak_source = peak_flops_per_device(self.run.train.peak_tflops, dtype)
        self.said_mfu_above_peak = False
        self.own_grad_norm: torch.Tensor | None = None  # ZeRO 0 fp32: DeepSpeed keeps none (train_step)
        self.grad_norm_wanted = True  # whether the next step's record will show it (fit sets it per step)
        self.resumed_from = prepared.resume_from
        # For the summary of a divergence (`_diverged`): when this session started, its last validation loss.
        self.session_start, self.last_val_loss = time.perf_counter(), float("nan")  # fit sets both again
        # Signals, --max-time, and the launcher's exit (only when a launcher started this rank).
        self.stop = StopRequest(
            options.max_time_s, grace_s=self.run.train.stop_grace_s, watch_launcher=prepared.dist_env.source != "single"
        )
        self.stop.eval_in_steps = len(self.val_batches) / self.plan.grad_accum  # before the first one is timed

    def _resume(self, path: Path) -> None:
        if self.reshape is not None:  # its files fit the model before DeepSpeed's load_universal reads them
            universal_check.check_on_all_ranks(
                self.reshape.target,
                universal_check.parameter_shapes(self.model),
                self.reshape.current.zero_stage == 3,
                self.reshape.source,
            )
        client = checkpoint.load(self.engine, self.reshape.target if self.reshape is not None else path)
        if self.reshape is not None:
            reshape_convert.unalias_optimizer_steps(self.engine)
        if self.hook is not None:
            self.hook.rebuild()
            # Masters rebuilt from bf16 weights (zero_optimization.load_from_fp32_weights: false) are
            # ~1e-3 off the sphere; vectors already on it to fp32 precision are left bit for bit.
            self.hook.normalize_now(keep_within=4e-6)
        self.loader.load_state_dict(client["loader"])
        rng_state.restore(client["rng"], self.device)
        self.step, self.tokens_seen = client["step"], client["tokens_seen"]
        if self.reshape is not None:
            self._say(reshape_plan.describe(self.reshape, self.reused_conversion, renormalized=self.hook is not None))
        else:
            self._say(f"resumed from {path} at step {self.step}")
        # This run's optimizer settings and schedule, not the checkpoint's; a line for each change.
        saved = preflight.saved_run_config(path)
        for line in apply_on_resume(self.engine.lr_scheduler, self.run.train, saved.get("train") or {}, self.step + 1):
            self._say(line)
        batch_line = describe_batch_change(saved.get("deepspeed") or {}, self.plan, self.run.model.seq_len)
        if batch_line is not None:
            self._say(batch_line)

    def _say(self, message: str) -> None:
        """A line of what the trainer does: rank 0's, or every rank's with --log-all-ranks (ngpt_ds.log)."""
        _log.info(message)

    def _mean_over_ranks(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        all_reduce_on(t, self.device)
        return (t / self.world).tolist()

    def _read_bad_data(self) -> float:
        return float(self.data_faults is not None and self.data_faults.first is not None)

    def _stop_on_bad_data(self, where: str, step: int) -> None:
        """Collective, on every rank once an all-reduce found a rank that read a token id beyond the
        vocabulary (ngpt_ds.data.windows.DeferredFaults): every rank raises that rank's NgptConfigError.
        Before the step's checkpoint: the batch went through the model as id 0 and is never saved."""
        first = self.data_faults.first if self.data_faults is not None else None
        note = (
            f" ({where} at step {step}; nothing was saved after step {step - 1}: the checkpoints in "
            f"{self.out_dir / 'checkpoints'} are intact, and --resume auto continues from the newest once the "
            "dataset is fixed)"
        )
        agreement.stop_all_if_any_failed(None if first is None else first + note)
        raise AssertionError("a rank flagged a bad token id but none recorded one")

    @torch.no_grad()
    def evaluate(self) -> float:
        if self.pipeline is not None:
            loss = self.pipeline.evaluate(self.val_batches)
        else:
            self.engine.eval()
            total = 0.0
            for inputs, targets in self.val_batches:
                _, batch_loss = self.engine(inputs.to(self.device), targets.to(self.device))
                total += batch_loss.float().item()
            self.engine.train()
            loss = total / len(self.val_batches)
        mean_loss, bad_data = self._mean_over_ranks([loss, self._read_bad_data()])
        if bad_data > 0:
            self._stop_on_bad_data("read in the evaluation", self.step)
        return mean_loss

    def save(self) -> Path:
        client_state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "loader": self.loader.state_dict(),
            "rng": rng_state.capture(self.device),
            "config": self.run.to_dict(),
        }
        return checkpoint.save(
            self.engine,
            self.out_dir,
            self.step,
            client_state,
            keep=self.run.train.keep_checkpoints,
            config_yaml=self.run.to_yaml(),
        )

    def train_step(self) -> tuple[float, bool, bool]:
        """One optimizer step over grad_accum micro-batches.

        Returns (mean loss over ranks, stop agreed, a sphere matrix norm became NaN/inf on some rank).
        Raises RenormalizationMissed (on every rank) if the step was applied without the hook.
        Raises NgptConfigError (on every rank) if a rank read a token id beyond the vocabulary.
        """
        renormalized_before = self.hook.renormalized_units if self.hook is not None else 0
        if self.pipeline is not None:
            mean_loss = self.pipeline.train_batch(self.loader, self.plan.grad_accum)
            if self.pipeline_grad_norm is not None:  # measured inside DeepSpeed's step, before clipping
                self.own_grad_norm = self.pipeline_grad_norm()
        else:
            loss_sum = torch.zeros((), device=self.device)
            for _ in range(self.plan.grad_accum):
                inputs, targets = self.loader.next_batch()
                _, loss = self.engine(inputs.to(self.device), targets.to(self.device))
                self.engine.backward(loss)
                if self.engine.is_gradient_accumulation_boundary():  # reduced over ranks, not yet clipped
                    # A pass over every gradient (and a tensor-parallel all-reduce): only for a step that is logged.
                    wanted = self.grad_norm_wanted
                    self.own_grad_norm = grad_norm_deepspeed_leaves_out(self.engine, self.model) if wanted else None
                self.engine.step()
                loss_sum += loss.detach().float()
            mean_loss = loss_sum / self.plan.grad_accum
        applied = self.engine.was_step_applied()
        if not applied and self.engine.lr_scheduler is not None:
            # fp16: DeepSpeed skips an overflowing step, and with it the schedule's step, so the LR lagged the
            # trainer's step by one per overflow for the rest of the run (and a resume, which recomputes it at
            # the step, did not reproduce an uninterrupted run). The LR follows the step count, as in the paper's
            # code, skipped steps included. torch warns when the first step is skipped ("call them in the opposite
            # order"), advice that does not apply: the order is DeepSpeed's, and this step is on purpose.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`", UserWarning)
                self.engine.lr_scheduler.step()
        hook, zero = self.hook, torch.zeros((), device=self.device)
        missed = hook is not None and hook.missed_step(renormalized_before, applied)
        flags = torch.stack(
            [
                mean_loss,
                torch.tensor(float(self.stop.step_ended()), device=self.device),  # times the step too
                hook.take_nonfinite(self.device) if hook is not None else zero,
                torch.tensor(float(missed), device=self.device),
                torch.tensor(self._read_bad_data(), device=self.device),
            ]
        ).double()
        # One collective: the mean loss, whether any rank must stop, whether any rank saw a NaN/inf
        # norm, whether any rank stepped without renormalizing, whether any rank read a bad token id.
        all_reduce_on(flags, self.device)
        if flags[4].item() > 0:  # first: the others may follow from it
            self._stop_on_bad_data("read", self.step + 1)
        if flags[3].item() > 0:
            assert hook is not None  # nGPT runs have a hook on every rank, GPT runs on none
            raise hook.missed_error(self.step + 1)
        return flags[0].item() / self.world, flags[1].item() > 0, flags[2].item() > 0

    def fit(self) -> Summary:
        train, max_steps = self.run.train, self.run.train.max_steps
        start_time = time.perf_counter()
        self._print_header()
        bar = tqdm(
            total=max_steps,
            initial=self.step,
            disable=None if self.show_progress else True,
            unit="step",
            dynamic_ncols=True,
            desc="train",
        )
        interval_seconds, interval_steps, interval_loss, timed_steps = 0.0, 0, 0.0, 0
        # This session's first step (torch.compile's minutes, allocator and kernel warm-up) is kept out of the
        # throughput of the steps logged with it: a compiled run's first record showed a 10-step mean of one
        # compile and nine steps. Alone in its record (log_interval 1), it is reported as it is.
        first_step_s: float | None = None
        train_loss = val_loss = float("nan")
        status, last_checkpoint = "finished", None
        self.session_start, self.last_val_loss = start_time, val_loss

        def log_interval() -> float:  # the record of the steps since the last one; their mean loss
            nonlocal interval_seconds, interval_steps, interval_loss, timed_steps
            step_time = interval_seconds / timed_steps if timed_steps else first_step_s
            assert step_time is not None  # set at the first step
            mean = interval_loss / interval_steps
            self._log(mean, step_time, step_lr)
            interval_seconds, interval_steps, interval_loss, timed_steps = 0.0, 0, 0.0, 0
            return mean

        def evaluates(step: int) -> bool:
            return bool(train.eval_interval and step % train.eval_interval == 0) or step == max_steps

        self.stop.steps_begin()
        agreement.stop_all_if_any_failed(self.stop.no_room_message())  # collective: exit 2 on every rank
        while self.step < max_steps:
            # --max-time decides at this step's end (and after its evaluation or save) whether the next one fits.
            self.stop.next_step_evaluates = evaluates(self.step + 2)
            # The LR this step applies: DeepSpeed steps the schedule after the optimizer, so get_lr() after the
            # step was the next step's (step 1 of a warmup logged lr/warmup, having trained at 0).
            step_lr = self.engine.get_lr()[0]
            # The same on every rank (the norm is collective over tensor-parallel ranks); a stop between log
            # intervals logs its step without the ZeRO 0 fp32 grad norm.
            self.grad_norm_wanted = (self.step + 1) % train.log_interval == 0 or self.step + 1 == max_steps
            step_start = time.perf_counter()
            loss, stop, sphere_broken = self.train_step()
            step_seconds = time.perf_counter() - step_start  # steps only: not evaluation, not saving
            if first_step_s is None:
                first_step_s = step_seconds
            else:
                interval_seconds, timed_steps = interval_seconds + step_seconds, timed_steps + 1
            if not math.isfinite(loss):
                raise self._diverged(
                    divergence.loss_message(loss, self.step + 1, train.lr, precision_of(self.run.deepspeed))
                    + self._checkpoints_left(),
                    self.step + 1,
                    loss,
                )
            if sphere_broken:
                self._sphere_diverged(self.step + 1, loss)
            self.step += 1
            self.tokens_seen += self.tokens_per_step
            interval_steps += 1
            interval_loss += loss
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            last = self.step == max_steps
            logged = self.step % train.log_interval == 0 or last or stop
            if logged:
                # summary.json's train_loss is the last record's: the interval's mean, as the dashboards show
                # (the last step's own loss was a number no record held: 6.153 where metrics.jsonl had 6.164).
                train_loss = log_interval()
            evaluated = evaluates(self.step)
            if evaluated:
                with self.stop.evaluating():  # not a step's time; timed for --max-time's margin
                    val_loss = self.last_val_loss = self.evaluate()
                if not math.isfinite(val_loss):  # the same on every rank (a mean over the ranks)
                    raise self._diverged(
                        divergence.val_loss_message(val_loss, self.step, train.lr) + self._checkpoints_left(),
                        self.step,
                        train_loss,
                    )
                self.metrics.log(self.step, {"eval/loss": val_loss, "eval/perplexity": math.exp(min(val_loss, 50))})
                self._say(
                    f"step {self.step}: validation loss {val_loss:.4f} (perplexity {math.exp(min(val_loss, 50)):.1f})"
                )
                if not stop and not last and self.stop.agreed(self.device):  # a request during the evaluation
                    stop = True
                    if not logged:
                        train_loss, logged = log_interval(), True
            if logged or evaluated:  # before the save: no checkpoint of a step metrics.jsonl lacks
                self.metrics.stop_if_unwritten(self.device, self._checkpoints_left)
            if stop and not self.stop.agree_to_save(self.device):  # collective; see ngpt_ds/train/stopping.py
                status = "stopped-unsaved"
                self._say(
                    f"stopping at step {self.step} ({self.stop.describe()}) "
                    f"without a checkpoint: {self.stop.unsaved_message()}. "
                    + (
                        f"The newest complete checkpoint ({last_checkpoint or self.resumed_from}) is intact; run the "
                        "same command again to resume from it."
                        if last_checkpoint or self.resumed_from
                        else "No checkpoint was saved yet: running the same command again starts from step 0."
                    )
                )
                break
            if (train.checkpoint_interval and self.step % train.checkpoint_interval == 0) or last or stop:
                if broken := divergence.nonfinite_weights(self.model, self.device):  # collective
                    message = divergence.weights_message(broken, self.step, train.lr)
                    raise self._diverged(message + self._checkpoints_left(), self.step, train_loss)
                with self.stop.saving():  # timed: the estimate for a stop's save (its grace, --max-time)
                    last_checkpoint = self.newest_checkpoint = self.save()
                # A request during the save stops here: this checkpoint is the stop's, not one a step later.
                stop = stop or (not last and self.stop.agreed(self.device))
                if not stop and not last:  # a stop's and the last save's lines say where they went
                    self._say(f"step {self.step}: checkpoint saved in {last_checkpoint}")
            if stop:
                status = "stopped"
                self._say(
                    f"stopping at step {self.step} ({self.stop.describe()}); "
                    f"checkpoint saved in {last_checkpoint}. Run the same command again to resume."
                )
                break
        self.stop.close()
        bar.close()
        # The newest complete checkpoint, what a rerun resumes from: a resumed session stopped before its first
        # save ("stopped-unsaved") wrote "checkpoint": null beside its line naming the intact one it resumed from.
        return self._finish(status, train_loss, val_loss, start_time, self.newest_checkpoint)

    def _log(self, loss: float, step_time: float, lr: float) -> None:
        tokens_per_s = self.tokens_per_step / step_time
        scalars = {
            "train/loss": loss,
            "train/lr": lr,
            "throughput/tokens_per_s": tokens_per_s,
            "throughput/step_time_s": step_time,
            "throughput/mfu": self.flops_per_token * tokens_per_s / (self.peak_flops * self.world),
            "train/tokens": float(self.tokens_seen),
        }
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is None and self.own_grad_norm is not None:
            grad_norm = self.own_grad_norm.item()
        if grad_norm is not None:
            scalars["train/grad_norm"] = float(grad_norm)
        scalars.update(memory_metrics())
        scalars.update(ngpt_health(self.model, self.hook))  # collective: every rank calls it
        if not math.isfinite(scalars.get("ngpt/max_norm_deviation", 0.0)):  # the same value on every rank
            self._sphere_diverged(self.step, loss)
        self.metrics.log(self.step, scalars)
        if self.is_main:
            if scalars["throughput/mfu"] > 1.0 and not self.said_mfu_above_peak:
                self.said_mfu_above_peak = True  # a CPU's peak measured while the machine was busy
                _log.warning(
                    f"warning: MFU above 100%: the peak it divides by ({format_rate(self.peak_flops, 'FLOP/s')} per device, "
                    f"{self.peak_source}) is too low, so this run's MFU figures are not meaningful. Set "
                    "train.peak_tflops to the device's dense peak (on a CPU, measure it on an idle machine)"
                )
            self._say(progress_line(self.step, self.run.train.max_steps, loss, scalars))

    def _print_header(self) -> None:
        if not self.is_main:
            return
        m, counts = self.run.model, count_parameters(self.model)
        total = getattr(self.model, "model_parameter_count", counts.total)  # a pipeline stage holds a part
        _log.info(
            f"training {m.display_name}: {m.n_layer} layers, d {m.n_embd}, {m.n_head} heads, context {m.seq_len}, "
            f"vocab {m.vocab_size}, {total / 1e6:.2f}M parameters | {self.world} rank(s), "
            f"global batch {self.plan.global_batch} x {m.seq_len} = {self.tokens_per_step} tokens/step | "
            f"peak {format_rate(self.peak_flops, 'FLOP/s')} per device ({self.peak_source})"
        )
        _log.info(f"DeepSpeed engine (read back): {self.ds_settings.describe(self.run.deepspeed)}")
