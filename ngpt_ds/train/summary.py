"""summary.json: the run's last word, which launch/slurm/train.sbatch reads to decide whether to requeue; and
`describe`, the lines the trainer prints about it at the end."""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from ngpt_ds import log
from ngpt_ds.errors import UNPARSABLE
from ngpt_ds.files import replace_file as replace_file  # where run files are written from
from ngpt_ds.train import checkpoint, run_lock
from ngpt_ds.train.manifest import RefusedFile, open_regular, read_capped

SUMMARY_FILE = "summary.json"
MAX_SUMMARY_BYTES = 64 * 1024
"""The largest summary.json read: the trainer writes about 400 bytes."""
MAX_RECORD_BYTES = 2**20
"""The longest metrics.jsonl line read (1 MiB); a longer one is skipped unread. A record takes about 40 bytes per
scalar: 3 nGPT scalars per layer make 12 KiB for 100 layers."""
MAX_CONFIG_BYTES = 2**20
"""The largest config.yaml `describe` reads (the trainer writes a few KiB)."""
_log = log.get(__name__)


@dataclass
class Summary:
    status: str
    """'finished', 'stopped' (signal, launcher gone or --max-time; checkpoint saved), 'stopped-unsaved'
    (an urgent stop came too late in train.stop_grace_s to save), 'diverged' (the loss or a sphere matrix became
    NaN/inf at `step`, exit 2) or 'already-finished' (nothing to do; returned, not written). A written summary's
    `checkpoint` is the newest complete one, what a rerun resumes from (None before any)."""
    step: int
    max_steps: int
    tokens: int
    train_loss: float
    val_loss: float
    seconds: float
    checkpoint: str | None
    out_dir: str
    max_time: dict | None = None
    """With --max-time only (`StopRequest.max_time_record`): limit_s; started_at, the rank's start, and
    checkpoint_saved_at, when this session's last save ended (seconds since the epoch: the save ends before
    started_at + limit_s); stopped_early_s, how long before the limit --max-time stopped the run (null when it
    did not)."""
    stopped_by: str | None = None
    """A stopped run only ('stopped', 'stopped-unsaved'): why, in the stop line's words (`StopRequest.describe`):
    a rank's signal, its launcher's exit, or its --max-time limit with that rank's figures, and which rank it was
    when it was another than rank 0."""


def json_safe(record: dict) -> dict:
    """`record` with null (None) for each float that is NaN or infinite: JSON has no such numbers, and
    json.dumps wrote NaN, which strict readers (jq, JavaScript's JSON.parse, most languages' parsers) refuse
    (MFU on a GPU not in the peak table; the seconds of a mended summary). TensorBoard keeps NaN."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in record.items()
    }


def summary_json(summary: Summary) -> str:
    """summary.json's text: `summary`, non-finite numbers as null (`json_safe`); no `max_time` without --max-time, no
    `stopped_by` unless the run stopped."""
    record = asdict(summary)
    for optional in ("max_time", "stopped_by"):
        if record[optional] is None:
            del record[optional]
    return json.dumps(json_safe(record), indent=2) + "\n"


def mend_finished_summary(out_dir: Path, step: int, max_steps: int) -> None:
    """Rank 0 of a rerun with nothing left to train: summary.json must say the run finished at `step`.

    A kill after the last checkpoint was in place and before summary.json was written (retention deletes
    old checkpoints in between) left the summary of an earlier stop, or none, and the rerun wrote nothing:
    summary.json said 'stopped' at an old step for good. The losses and tokens come from metrics.jsonl's
    records of that step (null when absent); the seconds trained are not known (null). Not in a folder another
    trainer holds."""
    path = out_dir / SUMMARY_FILE
    old = read_summary(out_dir)
    if old is not None and old.get("status") == "finished" and old.get("step") == step:
        return
    records = _records_of_step(out_dir / "metrics.jsonl", step)
    summary = Summary(
        "finished",
        step,
        max_steps,
        int(records.get("train/tokens", 0)),
        float(records.get("train/loss", math.nan)),
        float(records.get("eval/loss", math.nan)),
        math.nan,
        str(out_dir / checkpoint.CHECKPOINTS / checkpoint.tag_for(step)),
        str(out_dir),
    )
    try:
        with run_lock.unless_in_use(out_dir, checkpoints=False) as ours:  # writes summary.json only
            if ours:
                replace_file(path, summary_json(summary))
    except OSError as err:  # the run is finished either way; this rank alone would end in a traceback
        _log.warning(f"warning: could not write the finished summary to {path} ({err})")


def _records_of_step(metrics: Path, step: int) -> dict[str, float]:
    """The numbers metrics.jsonl's records of `step` hold (the later record's, for a key two of them hold). Read
    backward from the end, where a finished run's last step is, to the first record of an earlier step: the whole
    file had been read (a week's hundreds of MB)."""
    found: dict[str, float] = {}
    try:
        with open_regular(metrics) as f:
            for record, _ in _records_backward(f, 0, os.fstat(f.fileno()).st_size):
                at = record.get("step")
                if isinstance(at, bool) or not isinstance(at, int) or at > step:
                    continue
                if at < step:
                    break
                for key, value in record.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        found.setdefault(key, value)
    except (OSError, RefusedFile):
        pass
    return found


def read_summary(out_dir: Path) -> dict | None:
    """<out>/summary.json as a dict; None when it is absent, unreadable, not JSON, or not (a link to) a regular
    file of at most MAX_SUMMARY_BYTES (`manifest.read_capped`): a named pipe there hung rank 0 for good, a
    link to /dev/zero filled its memory."""
    try:
        summary = json.loads(read_capped(out_dir / SUMMARY_FILE, MAX_SUMMARY_BYTES).decode("utf-8"))
    except (OSError, RefusedFile, UnicodeDecodeError, *UNPARSABLE):
        return None
    return summary if isinstance(summary, dict) else None


def read_records(path: Path) -> Iterator[tuple[str, dict]]:
    """Each record of metrics.jsonl, read a line at a time: (the line as text, the record). Lines that are not a
    JSON object (cut short by a crash, bytes a bad disk left) are skipped, and so is a line longer than
    MAX_RECORD_BYTES, unread; no more than one line is held. The file is opened by `manifest.open_regular`,
    which raises RefusedFile for anything but a regular file (a named pipe, a device, a link to /dev/zero),
    OSError when it cannot be opened."""
    with open_regular(path) as f:
        for line, record in lines_of(f):
            if record is not None:
                yield line.decode("utf-8", errors="replace"), record


def lines_of(f: BinaryIO) -> Iterator[tuple[bytes, dict | None]]:
    """Each line of the open JSON-lines file `f` from where it stands: (its bytes, with the newline when it has
    one; its record, or None for a line that is no JSON object). A line longer than MAX_RECORD_BYTES is
    (b"", None), unread: no more than one line of at most MAX_RECORD_BYTES is held."""
    while line := f.readline(MAX_RECORD_BYTES + 1):
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            while (rest := f.readline(MAX_RECORD_BYTES + 1)) and not rest.endswith(b"\n"):
                pass  # the rest of an absurdly long line
            yield b"", None
            continue
        try:
            record = json.loads(line.decode("utf-8", errors="replace"))
        except UNPARSABLE:
            record = None
        yield line, record if isinstance(record, dict) else None


def records_if_readable(path: Path) -> Iterator[tuple[str, dict]]:
    """`read_records`, or none when the file cannot be read or is refused."""
    try:
        yield from read_records(path)
    except (OSError, RefusedFile):
        return


def describe(summary: Summary, command: Callable[[str], str] = lambda name: f"python launch/{name}.py") -> str:
    """The lines rank 0 prints at the end of a finished or stopped run, for someone who has just run the
    README's main command: what was trained, how the logged losses moved (metrics.jsonl's records, the
    numbers TensorBoard shows), where the checkpoint, metrics and dashboard are, and the commands to run next.
    `command("generate")` spells a next command as the user can run it: the checkout's launch/ script, or
    for a pip-installed ngpt-train the console script (ngpt_ds.cli.train decides)."""
    out = Path(summary.out_dir)
    done = summary.status == "finished"
    lines = [
        f"{'Done' if done else 'Stopped'}: {_what_was_trained(out)} to step {summary.step}/{summary.max_steps}, "
        f"{_tokens(summary.tokens)} tokens in all (this session: {_session_time(summary.seconds)})"
    ]
    if summary.stopped_by:  # which rank asked to stop, and why: the stop line's words, again at the end
        lines.append(f"  {'stopped by:':17}{summary.stopped_by}")
    loss_ends = _first_and_last(out / "metrics.jsonl", ("train/loss", "eval/loss"), summary.step)
    for key, name in (("train/loss", "train loss"), ("eval/loss", "validation loss")):
        ends = loss_ends.get(key)
        if ends:
            (first_step, first), (last_step, last) = ends
            moved = f"{first:.3f} at step {first_step}" + (
                f" -> {last:.3f} at step {last_step}" if last_step != first_step else ""
            )
            lines.append(
                f"  {name + ':':17}{moved}" + (f" (perplexity {_perplexity(last)})" if key == "eval/loss" else "")
            )
    # The commands as a shell takes them: a run folder with a space ('my runs/x') had read `... generate.py my runs/x`,
    # two arguments when pasted. shlex.quote leaves a path of plain characters as it is.
    run_folder = shlex.quote(str(out))
    lines += [
        f"  {'checkpoint:':17}{summary.checkpoint}",
        f"  {'metrics:':17}{out / 'metrics.jsonl'}",
        f"  {'dashboard:':17}tensorboard --logdir {shlex.quote(str(out / 'tensorboard'))}",
        "next:" if done else "next: run the same command again to resume from the checkpoint, or",
        f'  {command("generate")} {run_folder} --prompt "And God said"',
        f"  {command('evaluate')} {run_folder}",
        f"  {command('export')} {run_folder} --out {shlex.quote('exports/' + out.name)}",
    ]
    if done:
        lines.append(
            f"  the same command with --max-steps {2 * summary.max_steps} trains further from step {summary.step}"
        )
    return "\n".join(lines)


def _what_was_trained(out: Path) -> str:
    """'nGPT (ngpt_tiny.yaml)' from the run's effective config.yaml; 'the model' when it cannot be read."""
    from ngpt_ds import yaml_safe

    try:
        config = yaml_safe.safe_load(read_capped(out / "config.yaml", MAX_CONFIG_BYTES).decode("utf-8"))
        arch, source = config["model"]["arch"], Path(config["config_source"]).name
    except (OSError, RefusedFile, yaml_safe.YAMLError, TypeError, KeyError, *UNPARSABLE):
        return "the model"
    return f"{ {'ngpt': 'nGPT', 'gpt': 'GPT'}.get(arch, str(arch)) } ({source})"


def _first_and_last(
    metrics: Path, keys: tuple[str, ...], step: int
) -> dict[str, tuple[tuple[int, float], tuple[int, float]]]:
    """For each of `keys` recorded up to `step` in metrics.jsonl, its first and its last record, as (step, value)
    (a step logged twice, by a run stopped after it without a checkpoint and by its resume: the later record).

    Holding two records per key: every logged step's value had been kept in a dict, a pass per key (about 95
    bytes per record: 570 MB for the 6M records of a week at 10 steps/s with train.log_interval 1). And reading
    the file's first DESCRIBE_HEAD_BYTES forward and its end backward, newest record first, until each key's last
    record is found: every session's end had read and parsed the whole file (a week's 380 MB of a 24-layer nGPT:
    5 s of rank 0's exit, after a stop's save, where a launcher's kill follows a SIGTERM within seconds). A key
    that the first part does not hold is shown by its last record alone; one that the end does not hold (an
    evaluation turned off on a resume) is looked for further back, as far as the first part."""
    ends: dict[str, list[tuple[int, float]]] = {}
    try:
        with open_regular(metrics) as f:
            for _, record in lines_of(f):
                if record is not None:
                    _take_ends(ends, record, keys, step)
                if f.tell() >= DESCRIBE_HEAD_BYTES:
                    break
            head, size = f.tell(), os.fstat(f.fileno()).st_size
            if head < size:
                for key, last in _lasts_backward(f, head, size, keys, step, set(ends)).items():
                    pair = ends.setdefault(key, [last, last])
                    pair[1] = last
    except (OSError, RefusedFile):
        pass
    return {key: (first, last) for key, (first, last) in ends.items()}


DESCRIBE_HEAD_BYTES = 64 * 2**20
"""How much of metrics.jsonl `describe` reads from its start for each key's first record (the whole file, below)."""


def _value_at(record: dict, key: str, step: int) -> tuple[int, float] | None:
    """(the record's step, its finite value of `key`) when the record is of a step up to `step`; else None."""
    at, value = record.get("step"), record.get(key)
    if isinstance(at, bool) or not isinstance(at, int) or at > step:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return at, float(value)


def _take_ends(ends: dict[str, list[tuple[int, float]]], record: dict, keys: tuple[str, ...], step: int) -> None:
    for key in keys:
        found = _value_at(record, key, step)
        if found is None:
            continue
        pair = ends.setdefault(key, [found, found])
        if found[0] <= pair[0][0]:
            pair[0] = found
        if found[0] >= pair[1][0]:
            pair[1] = found


def _lasts_backward(
    f: BinaryIO, start: int, end: int, keys: tuple[str, ...], step: int, wanted: set[str]
) -> dict[str, tuple[int, float]]:
    """Each key's last record in f's bytes [start, end) (`start` a line's start), read backward: until every key is
    found, or every key of `wanted` is and DESCRIBE_HEAD_BYTES were read."""
    lasts: dict[str, tuple[int, float]] = {}
    for record, read in _records_backward(f, start, end):
        for key in keys:
            if key not in lasts and (found := _value_at(record, key, step)) is not None:
                lasts[key] = found
        if len(lasts) == len(keys) or (wanted <= lasts.keys() and read >= DESCRIBE_HEAD_BYTES):
            break
    return lasts


def _records_backward(f: BinaryIO, start: int, end: int) -> Iterator[tuple[dict, int]]:
    """The JSON-object lines of f's bytes [start, end), the last first, each with the bytes read so far. A line
    longer than MAX_RECORD_BYTES is skipped, no more than that of it held."""
    pos, carry, skipping = end, b"", False
    while pos > start:
        size = min(2**20, pos - start)
        pos -= size
        lines = (os.pread(f.fileno(), size, pos) + carry).split(b"\n")
        if skipping:  # the rest of a line too long to hold
            if len(lines) == 1:
                continue
            lines[-1], skipping = b"", False
        carry = lines[0]
        if len(carry) > MAX_RECORD_BYTES:
            carry, skipping = b"", True
        for line in reversed(lines[1:]):
            if (record := _record(line)) is not None:
                yield record, end - pos
    if carry and not skipping and (record := _record(carry)) is not None:
        yield record, end - start


def _record(line: bytes) -> dict | None:
    try:
        record = json.loads(line.decode("utf-8", errors="replace")) if line.strip() else None
    except UNPARSABLE:
        return None
    return record if isinstance(record, dict) else None


def _tokens(count: int) -> str:
    """4096 -> '4.1k' (a short run printed '0.00M'), 614400 -> '0.61M', 2.5e9 -> '2.50B', 1.2e12 -> '1.20T' (a long
    run printed '1200000.00M')."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e5, "M")):
        if count >= scale:
            return f"{count / (1e6 if suffix == 'M' else scale):.2f}{suffix}"
    return f"{count / 1e3:.1f}k"


def _session_time(seconds: float) -> str:
    """312.34 -> '5m12.3s', 7 days -> '168h00m05.0s'. Rounded to a tenth before it is split: 359.97 s printed
    '5m60.0s', and a week '10080m05.0s'."""
    hours, tenths = divmod(round(seconds * 10), 36000)
    minutes, tenths = divmod(tenths, 600)
    return (f"{hours}h{minutes:02d}m" if hours else f"{minutes}m") + f"{tenths / 10:04.1f}s"


def _perplexity(loss: float) -> str:
    return f"{math.exp(loss):.1f}" if loss < 50 else "n/a"
