"""Stop requests: every way a job is told to stop ends in a checkpoint, or in a message saying why not.

A request sets a flag; the ranks agree on it at the next step boundary (through the step's
all-reduce, in `ngpt_ds.train.loop`), save a checkpoint and exit (README "Stopping a run"). Sources:

- SIGTERM: a launcher passing on a stop, `docker stop`, Slurm's scancel or preemption;
  SIGINT: Ctrl-C (DeepSpeed's launcher and torchrun pass it on); SIGHUP: the terminal closed (left
  ignored under nohup). Each sender kills the process some seconds later (DeepSpeed's launch.py and
  torchrun: 30 s; Slurm: KillWait; Docker: its stop timeout), so these are *urgent*: the save must
  end within `train.stop_grace_s` of the signal.
- SIGUSR1 and SIGUSR2 (Slurm's warning before a time limit, `--signal=USR1@180` or USR2@T) and
  `--max-time`: they come ahead of time, so no grace applies. --max-time stops early enough for the last step
  and its save to end before the limit: at the first step boundary where now + the recent step time + the
  save estimate (and the evaluation's time when the next step evaluates) would pass it
  (`StopRequest.max_time_margin_s`).
- The launcher exited: the process that started this rank (torchrun, DeepSpeed's launch.py,
  slurmstepd, mpirun) and, under DeepSpeed's launch.py, the `deepspeed` runner above it. DeepSpeed's
  runner has no signal handler for local runs: SIGTERM to its pid alone kills it and leaves its
  ranks training on, holding the rendezvous port. A rank that sees its launcher gone stops (urgent).

Handlers never raise, so a second signal during a save (DeepSpeed's launch.py sends SIGTERM after
a group's SIGINT; an impatient Ctrl-C) is counted and cannot cut the save short.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import psutil
import torch
import torch.distributed as dist

from ngpt_ds.train import early_signals, stop_words
from ngpt_ds.train.collectives import all_reduce_on

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType

STOPPED_UNSAVED_EXIT_CODE = 75
"""launch/train.py's exit status when a stop request came too late in its grace period for a save
(sysexits' EX_TEMPFAIL: rerun to resume). The newest complete checkpoint is untouched."""

URGENT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WARNING_SIGNALS = early_signals.WARNING_SIGNALS
_NO_DEADLINE = 1e18
STEP_TIMES_KEPT = 8
"""--max-time's step time is the longest of this many recent steps: one slow step (a log interval's records, a
busy file system) is not taken as the next one's length, and jitter does not eat the margin."""
FIRST_SAVE_GUESS_S = 60.0
FIRST_SAVE_GUESS_SHARE = 0.1
"""Before this session's first save, --max-time's save estimate is FIRST_SAVE_GUESS_S or that share of
--max-time, whichever is less: a guess on the safe side for a single node (a save of a few GB takes seconds),
and not most of a short test run. Once a save was timed, the slowest rank's last save replaces it; a periodic
save (train.checkpoint_interval) well before the limit gives a large model a measured one."""
PARENT_PID_VARIABLE = "NGPT_DS_PARENT_PID"
"""'PARENT:PID', set by launch/train.py as it starts: the parent that started process PID, so that a
launcher that dies during the startup (imports, process group, engine) is noticed as well. Only
PID itself trusts it: a process that merely inherited the variable ignores it."""


class StopRequest:
    """The flag, the grace period of an urgent request, and the watch on the launcher.

    Create it in the main thread (Python delivers signals there)."""

    def __init__(self, max_time_s: float | None, grace_s: float = 25.0, watch_launcher: bool = False):
        # --max-time counts from this rank's start, not the trainer's: the startup (imports, the engine, a
        # checkpoint's load or conversion, minutes at scale) had gone uncounted, and a job given its allocation's
        # time less a margin ran past the limit by the startup and was killed without a checkpoint.
        age = process_age_s()
        self.max_time_s = max_time_s
        self.started_at = time.time() - age
        """The rank's start (seconds since the epoch): --max-time's limit is started_at + max_time_s."""
        self.deadline = None if max_time_s is None else time.monotonic() + max_time_s - age
        self.early_s: float | None = None
        """How long before the limit --max-time stopped the run (None: it did not stop it early)."""
        self.saved_at: float | None = None
        """When this session's last save ended (seconds since the epoch)."""
        self.last_stop_path_s: float | None = None
        """This rank's last save as a stop sees it: from the step's end (its boundary) to the save's end, the step's
        records and the checks before the save included, evaluations left out."""
        self.job_save_s: float | None = None
        """The slowest rank's last_stop_path_s, agreed in `agreed` after each save: --max-time's save estimate."""
        self.eval_s: float | None = None
        """This rank's last evaluation, in seconds (its mean's all-reduce included: about the slowest rank's)."""
        self.eval_in_steps = 0.0
        """An evaluation's length in training steps, an upper bound set by the loop: its batches over the step's
        micro-batches (a forward each, where a training micro-batch is a forward, a backward and its share of the
        optimizer step). --max-time's estimate of an evaluation before the first one is timed."""
        self.next_step_evaluates = False
        """Set by the loop before each step: whether the step after it evaluates (an eval_interval multiple, or the
        last step), so that the evaluation before that step's save is in --max-time's margin."""
        self.margin_parts: tuple[float, float, float] | None = None
        """--max-time's margin where it stopped the run: (step, evaluation, save) seconds; on a rank that another
        rank's margin stopped, that rank's (`agree_to_save`)."""
        self._boundary: float | None = None
        self._step_times: deque[float] = deque(maxlen=STEP_TIMES_KEPT)
        self.grace_s = grace_s
        self.reason: str | None = None
        self.told: str | None = None
        """On a rank without a request of its own: the request of the rank that asked, in words (`learn_who_asked`)."""
        self.who_learned = False
        self.urgent_since: float | None = None
        """time.monotonic() of the first urgent request; the save must end by urgent_since + grace_s."""
        self.repeated = 0
        """Requests after the first one (signals during the save): counted, never obeyed."""
        self.last_save_s: float | None = None
        """This rank's last save, in seconds."""
        self.time_left: float | None = None
        self.save_estimate_s: float | None = None
        """The job's estimate of a save at the last `agree_to_save`: its slowest rank's last save."""
        for sig in URGENT_SIGNALS + WARNING_SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN and sig in (signal.SIGINT, signal.SIGHUP):
                continue  # nohup, or a background job of a non-interactive shell: stay as the user chose
            signal.signal(sig, self._on_signal)
        for signum in early_signals.take():  # kept during the startup (ngpt_ds/train/early_signals.py)
            self._request(f"signal {signal.Signals(signum).name}, received during the startup", urgent=False)
        self.watch = LauncherWatch(self._launcher_exited) if watch_launcher else None
        if self.watch is not None:
            self.watch.start()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._request(f"signal {signal.Signals(signum).name}", urgent=signum in URGENT_SIGNALS)

    def _launcher_exited(self, description: str) -> None:
        self._request(f"{description} exited", urgent=True)

    def _request(self, reason: str, urgent: bool) -> None:
        if self.reason is None:
            self.reason = reason
        else:
            self.repeated += 1
        if urgent and self.urgent_since is None:
            self.urgent_since = time.monotonic()

    def requested(self) -> bool:
        """Whether this rank has a stop request. --max-time asks at the step boundary (and after an evaluation or a
        save) where one more step and its save would end past the limit: it had waited for the limit itself, so
        the step that started just before it and that step's save ran past it (a job given its allocation's time
        less a margin was killed mid-save when the margin was shorter than a step and a save)."""
        if self.reason is None and self.deadline is not None:
            now = time.monotonic()
            if now > self.deadline:
                self.reason = stop_words.MAX_TIME_REACHED
            elif now + self.max_time_margin_s() > self.deadline:
                self.early_s = self.deadline - now
                self.margin_parts = self._margin_parts()
                self.reason = stop_words.margin_reason(self.early_s)
        return self.reason is not None

    def max_time_margin_s(self) -> float:
        """What --max-time keeps free before its limit: the recent step time (the longest of the last
        STEP_TIMES_KEPT, from one step boundary to the next, evaluations and saves left out), the last evaluation's
        time when the next step evaluates (the last step always does: a run whose last step evaluated had
        overrun the limit by that evaluation; before the first is timed, `eval_in_steps` recent steps), and the save
        estimate (the slowest rank's last save, timed from its step's end, this rank's own when it took longer; before
        any, FIRST_SAVE_GUESS_S or FIRST_SAVE_GUESS_SHARE of --max-time, whichever is less)."""
        return sum(self._margin_parts())

    def _margin_parts(self) -> tuple[float, float, float]:
        step = max(self._step_times, default=0.0)
        # Before the first evaluation is timed, its batches at a training micro-batch's time each: with no estimate,
        # a run whose first evaluation was due just before the limit overran it by that evaluation and its save.
        measured = self.eval_s if self.eval_s is not None else step * self.eval_in_steps
        evaluation = measured if self.next_step_evaluates else 0.0
        timed = [s for s in (self.job_save_s, self.last_stop_path_s) if s is not None]
        if timed:
            save = max(timed)
        else:
            save = min(FIRST_SAVE_GUESS_S, FIRST_SAVE_GUESS_SHARE * (self.max_time_s or 0.0))
        return step, evaluation, save

    def steps_begin(self) -> None:
        """The training loop starts: the first step is timed from here."""
        self._boundary = time.monotonic()

    def no_room_message(self) -> str | None:
        """Before the first step: the error when --max-time has no room for a step and its save, None otherwise. The
        startup (imports, the engine, a checkpoint's load or conversion) counts, and a limit shorter than it plus the
        save estimate had trained one step and saved it past the limit, saying only '--max-time reached': a requeued
        job did the same each time, one step a job, each save at risk of the scheduler's kill."""
        if self.deadline is None or self.max_time_s == 0:  # 0: one step and its save, on purpose (launch/train.py)
            return None
        left = self.deadline - time.monotonic()
        save = self._margin_parts()[2]
        if left > save:
            return None
        return (
            f"--max-time {self.max_time_s:g} s leaves no time to train: it counts from the rank's start, this rank's "
            f"startup (imports, the engine, a checkpoint's load) took {(self.max_time_s or 0.0) - left:.1f} s of it, and one "
            f"step and its save need more than the {max(left, 0.0):.1f} s left (the save estimate alone: {save:.1f} "
            "s). Nothing was trained or saved; raise --max-time, or leave it out"
        )

    def step_ended(self) -> bool:
        """At each step's end, before its all-reduce: time the step (for --max-time's margin), then `requested`."""
        now = time.monotonic()
        if self._boundary is not None:
            self._step_times.append(now - self._boundary)
        self._boundary = now
        return self.requested()

    @contextlib.contextmanager
    def outside_steps(self) -> Iterator[None]:
        """An evaluation or a save: kept out of the next step's time."""
        start = time.monotonic()
        yield
        if self._boundary is not None:
            self._boundary += time.monotonic() - start

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """An evaluation: kept out of the step time, and timed for --max-time's margin."""
        start = time.monotonic()
        with self.outside_steps():
            yield
        self.eval_s = time.monotonic() - start

    def seconds_left(self) -> float:
        """Of this rank's grace period; unbounded without an urgent request."""
        if self.urgent_since is None:
            return _NO_DEADLINE
        return self.urgent_since + self.grace_s - time.monotonic()

    def agreed(self, device: torch.device | str) -> bool:
        """Collective: whether a rank has a stop request now. The loop asks after an evaluation and after a
        save (minutes at scale): a request during either had waited for the next step's all-reduce, so a
        SIGTERM's grace went on that step (then a stop unsaved, exit 75, or the sender's kill) and --max-time
        overran by a step and a second save. The same all-reduce (a maximum) agrees on the slowest rank's last
        save, --max-time's save estimate on every rank: a save ends when the slowest rank's does. When the ranks
        agree to stop, every rank learns who asked and why (`learn_who_asked`)."""
        path = self.last_stop_path_s
        requested = float(self.requested())
        agreed = torch.tensor([requested, path or 0.0], dtype=torch.float64, device=device)
        all_reduce_on(agreed, device, op=dist.ReduceOp.MAX)  # with it, the slowest rank's last save
        if path is not None:
            self.job_save_s = agreed[1].item()
        stop = agreed[0].item() > 0
        if stop:  # the same answer on every rank: all of them reach the collectives in it
            self.learn_who_asked(device)
        return stop

    def learn_who_asked(self, device: torch.device | str) -> None:
        """Collective, on every rank once the ranks agreed to stop (once: later calls return at once, on every rank):
        the lowest rank with a request tells the others its reason and its --max-time figures, all of that one rank
        (ngpt_ds/train/stop_words.py). Two small all-reduces, only in the step where the run stops. The step's own
        all-reduce says only whether some rank asked: rank 0's stop line and summary.json had said 'another rank was
        asked to stop' for a signal or a --max-time limit that reached another rank only, and a maximum over the
        ranks' figures had mixed those of two ranks whose margins tripped in the same step."""
        if self.who_learned:
            return
        self.who_learned = True
        rank, world = dist.get_rank(), dist.get_world_size()
        asker = torch.tensor([float(world - rank) if self.reason is not None else 0.0], dtype=torch.float64)
        all_reduce_on(asker, device, op=dist.ReduceOp.MAX)
        chosen = world - int(asker.item())
        if chosen >= world:  # no rank has a reason (not expected: the stop was agreed on one)
            return
        words = stop_words.encode(rank, self.reason, self.max_time_s, self.early_s, self.margin_parts)
        payload = torch.tensor(words if rank == chosen else [0] * len(words), dtype=torch.int32)
        all_reduce_on(payload, device)  # a sum: the chosen rank's bytes, zeros from the others
        if self.reason is None:
            told = stop_words.decode(payload.tolist())
            self.told = told.words
            if told.early_s is not None and told.margin_parts is not None:
                self.early_s, self.margin_parts = told.early_s, told.margin_parts

    def describe(self) -> str:
        """Why the run stops, for its stop line and summary.json: this rank's own request, or the request of the rank
        that asked (`learn_who_asked`), named with its reason and figures."""
        return self.told or self.reason or "another rank was asked to stop"

    def agree_to_save(self, device: torch.device | str) -> bool:
        """Collective, once the ranks agreed to stop: does the save fit into what is left of the grace
        on every rank? The estimate is the slowest rank's last save; before any, the save is tried (a save
        cut short by the launcher's SIGKILL never replaces the previous checkpoint). Both numbers are
        agreed in one all-reduce (a maximum of -time left and of the save times), so every rank answers
        the same: with its own last save each, a rank whose save had taken longer than the time left
        stopped unsaved while the others entered the save's collectives and waited for it there (gloo:
        'Connection closed by peer'; NCCL: train.dist_timeout_s).

        Then every rank learns which rank asked to stop, and why (`learn_who_asked`), as `agreed` does when it agrees
        after an evaluation or a save."""
        left = min(self.seconds_left(), _NO_DEADLINE)
        agreed = torch.tensor([-left, self.last_save_s or 0.0], dtype=torch.float64, device=device)
        all_reduce_on(agreed, device, op=dist.ReduceOp.MAX)
        self.time_left, self.save_estimate_s = -agreed[0].item(), agreed[1].item()
        self.learn_who_asked(device)
        return self.time_left > self.save_estimate_s

    def unsaved_message(self) -> str:
        estimate = self.save_estimate_s if self.last_save_s is not None else None
        took = f", the last save took {estimate:.1f} s" if estimate is not None else ""
        return (
            f"no time left to save (train.stop_grace_s = {self.grace_s:g}, {max(self.time_left or 0.0, 0.0):.1f} s "
            f"of it left{took})"
        )

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Time a save, for the next stop's estimate (its grace; --max-time's, from the step's end); kept out of the
        step time."""
        start = time.monotonic()
        since = start if self._boundary is None else self._boundary  # moved past this step's evaluation
        with self.outside_steps():
            yield
        end = time.monotonic()
        self.last_save_s, self.last_stop_path_s, self.saved_at = end - start, end - since, time.time()

    def max_time_record(self) -> dict[str, Any] | None:
        """summary.json's `max_time`: the limit, when this rank started, when its last save ended, and how early
        --max-time stopped the run (seconds since the epoch; None without --max-time)."""
        if self.max_time_s is None:
            return None
        return {
            "limit_s": self.max_time_s,
            "started_at": self.started_at,
            "checkpoint_saved_at": self.saved_at,
            "stopped_early_s": self.early_s,
        }

    def close(self) -> None:
        """Stop watching the launcher. The signal handlers stay to the end of the process, so a signal
        that arrives while it shuts down does not turn a clean stop into a crash."""
        if self.watch is not None:
            self.watch.stop()


def process_age_s() -> float:
    """Seconds since this process started (0 when unknown)."""
    try:
        return max(0.0, time.time() - psutil.Process().create_time())
    except psutil.Error:
        return 0.0


def original_parent_pid() -> int:
    parent, _, pid = os.environ.get(PARENT_PID_VARIABLE, "").partition(":")
    return int(parent) if pid == str(os.getpid()) and parent.isascii() and parent.isdigit() else os.getppid()


def launcher_processes(ppid: int) -> list[psutil.Process]:
    """The processes whose exit means this rank must stop: its parent and, when the parent is
    DeepSpeed's per-node launcher (`python -m deepspeed.launcher.launch`), the `deepspeed` runner (or
    the remote shell) that started it."""
    try:
        parent = psutil.Process(ppid)
        watched = [parent]
        if "deepspeed.launcher.launch" in " ".join(parent.cmdline()):
            runner = parent.parent()
            if runner is not None and runner.pid != 1:
                watched.append(runner)
        return watched
    except psutil.Error:  # the parent is already gone: the watch reports it at once
        return []


class LauncherWatch:
    """A daemon thread that calls `on_exit(description)` once, when a launcher process is gone (or a
    zombie): the parent's death also shows as a new parent pid (the rank was re-parented)."""

    def __init__(self, on_exit: Callable[[str], None], interval_s: float = 0.5) -> None:
        self.on_exit = on_exit
        self.interval_s = interval_s
        self.ppid = original_parent_pid()
        self.watched = [(proc, _describe(proc)) for proc in launcher_processes(self.ppid)]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ngpt-launcher-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def gone(self) -> str | None:
        if self.ppid == 0:
            # Started by a process outside this PID namespace: the rank is a container's process 1 (a Kubernetes
            # pod's `command: python launch/train.py`, `docker run --entrypoint python3`). There is no launcher to
            # watch; the runtime stops the container with a signal, which stops the run as any other.
            return None
        if not self.watched or os.getppid() != self.ppid:
            return self.watched[0][1] if self.watched else f"the parent process (pid {self.ppid})"
        for proc, description in self.watched:
            if not _alive(proc):
                return description
        return None

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            description = self.gone()
            if description is not None:
                self.on_exit(description)
                return


def _describe(proc: psutil.Process) -> str:
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        cmdline = []
    words = " ".join(cmdline)
    name = (
        "DeepSpeed's launch.py"
        if "deepspeed.launcher.launch" in words
        else "the deepspeed runner"
        if "deepspeed" in words
        else "torchrun"
        if "torch.distributed.run" in words or "torchrun" in words
        else os.path.basename(cmdline[0])
        if cmdline
        else "the parent process"
    )
    return f"its launcher {name} (pid {proc.pid})"


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
