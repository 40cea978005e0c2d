"""Startup checks of a run's surroundings, before any process group or output folder exists.

- `--out` must be writable: a read-only folder would otherwise fail at the first save, after
  the compute was spent, with an OSError traceback.
- A checkpoint to resume from must fit this run: the same model config (a vocab-512 checkpoint
  on vocab-400 data failed inside DeepSpeed's load with a state_dict size-mismatch traceback,
  after --out was created), and data from the same tokenizer (one with the same vocabulary
  size but other pieces would train on token ids that mean different text). The checkpoint's
  config.yaml records both (`model`, `tokenizer_sha256`).
- A checkpoint resumes only on the training data it was trained on (config.yaml's
  `train_data_sha256`): on another dataset with as many windows (the same corpus prepared in another
  document order, say) the saved data position pointed into other windows, re-reading text the run
  had seen and skipping text it had not, without a word.
- A checkpoint resumes only with the seed it was trained with, which orders the data: the loader
  refused another one only once the engine had started and the checkpoint was loaded, after
  `<out>/config.yaml` had been rewritten with the refused seed.
- A checkpoint resumes only at the precision it was trained in (the `deepspeed:` section of its
  config.yaml): DeepSpeed names and lays out its optimizer state per precision, so fp32 <-> bf16
  failed inside its load with a FileNotFoundError, KeyError 'param_groups' or 'dynamic_loss_scale'
  traceback, after the engine had started.
- Every checkpoint writes, on some rank, a file of at least 12 bytes per parameter over the ranks (the fp32
  master and Adam's two moments of that rank's share): under a file-size limit (`ulimit -f`) below that, the
  first save failed after the compute up to it was spent, and so did every rerun.
- `train.compile: true` needs Inductor's code generator: a C++ compiler on CPU, Triton on a GPU.
  Without it the first step failed inside Inductor (InvalidCxxCompiler), after the run had started.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ngpt_ds import yaml_safe
from ngpt_ds.data.fingerprint import split_fingerprint
from ngpt_ds.data.shards import DatasetMeta, load_dataset_meta
from ngpt_ds.errors import UNPARSABLE, NgptConfigError
from ngpt_ds.model import ModelConfig
from ngpt_ds.model.config import MAX_CONFIG_FILE_BYTES
from ngpt_ds.train.ds_config import precision_of
from ngpt_ds.train.manifest import read_capped


def check_writable(out_dir: Path) -> None:
    """--out, or the nearest folder above it that exists, must accept a new file."""
    existing = Path(out_dir)
    # A link to nothing on the way does not exist, so the walk passed above it, and creating --out later
    # failed with 'not writable (File exists)'.
    for link in (existing, *existing.parents):
        if link.is_symlink() and not link.exists():
            raise NgptConfigError(
                f"--out {out_dir}: {link} is a symbolic link to {os.readlink(link)}, which does not exist; create "
                "that folder, or choose another --out"
            )
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NgptConfigError(f"--out {out_dir}: {existing} is a file, not a folder; choose another --out")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ngpt_ds-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        where = "it" if existing == Path(out_dir) else f"{existing}, where it would be created"
        # A full disk (no block or inode left) or a spent quota is no wrong --out: another --out had started the
        # same command over from step 0 there, the run's checkpoints unused (run_lock says the same).
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        fix = (
            "its filesystem is full (or your disk quota there is spent). Free space there (or have the quota "
            "raised), then run the same command again"
            if full
            else "choose a writable --out"
        )
        raise NgptConfigError(
            f"--out {out_dir} is not writable (cannot create a file in {where}: {err.strerror}); {fix}"
        ) from None


CHECKPOINT_FILE_BYTES_PER_PARAMETER = 12
"""What one rank's largest checkpoint file holds per parameter of its share at the least: the fp32 master weights
and Adam's two moments (DeepSpeed's `*optim_states.pt` of ZeRO 1-3 and of its bf16 optimizer, or the model states
file of ZeRO 0 with the module and its optimizer's state; 47.3 MB for ngpt_tiny's 3.9M parameters on one rank)."""

PIPELINE_ZERO0_CHECKPOINT_FILE_BYTES_PER_PARAMETER = 8
"""The same for a pipeline at ZeRO 0 (fp32: torch's Adam, no master copy): DeepSpeed's PipelineEngine writes the
weights into one layer_NN-model_states.pt per layer, so a stage's largest file is its model states file, which holds
Adam's two moments of the stage's parameters and no weights (291 KB per stage of a tiny 2-stage run whose 12-byte
bound was 393 KB)."""


def check_file_size_limit(parameters: int, world_size: int, out_dir: Path, *, pipeline_zero0: bool = False) -> None:
    """Refuse a run whose checkpoints cannot be written under this process's file-size limit (RLIMIT_FSIZE, set by
    `ulimit -f` in a shell or job script). `parameters`: a lower bound on the model's parameters; the ranks share
    them at best evenly, so some rank writes a file of at least CHECKPOINT_FILE_BYTES_PER_PARAMETER *
    parameters / world_size bytes at every save, the last step's included. Below that limit no save can succeed;
    above it one may still fail (DeepSpeed's files carry more), and the save then names the limit.
    `pipeline_zero0`: a pipeline at ZeRO 0, whose largest file holds only the moments
    (PIPELINE_ZERO0_CHECKPOINT_FILE_BYTES_PER_PARAMETER)."""
    from ngpt_ds.train.fs_errors import gib

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    per_parameter = (
        PIPELINE_ZERO0_CHECKPOINT_FILE_BYTES_PER_PARAMETER if pipeline_zero0 else CHECKPOINT_FILE_BYTES_PER_PARAMETER
    )
    largest = per_parameter * parameters // max(world_size, 1)
    state = "Adam's two moments" if pipeline_zero0 else "the fp32 master weights and Adam's two moments"
    if limit == resource.RLIM_INFINITY or limit >= largest:
        return
    raise NgptConfigError(
        f"this process may write no file over {gib(limit)} (its file-size limit: `ulimit -f` in the shell or job "
        f"script that started it), and every checkpoint of this run writes a file of at least {gib(largest)} into "
        f"{out_dir} ({state} of one rank's share of at least {parameters:,} parameters over {world_size} "
        f"rank{'s' if world_size != 1 else ''}), so no checkpoint could be saved. "
        "Raise the limit (`ulimit -f unlimited` before the launch)"
    )


def check_compile_toolchain(compile_model: bool, on_cpu: bool) -> None:
    """train.compile: Inductor compiles C++ on CPU (the compiler in $CXX, else g++, or clang++ on macOS:
    the one Inductor picks) and Triton kernels on GPUs."""
    if not compile_model:
        return
    fix = 'or turn compiling off: --no-compile, or train.compile: false in the YAML (README "Compile")'
    if on_cpu:
        compiler = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
        if shutil.which(compiler) is None:
            raise NgptConfigError(
                f"train.compile: true compiles the model with torch.compile, whose CPU code generator needs "
                f"a C++ compiler, and {compiler!r} (the $CXX variable, else the platform's default) is not on "
                f"PATH; install one (e.g. apt-get install g++) {fix}"
            )
    elif importlib.util.find_spec("triton") is None:
        raise NgptConfigError(
            "train.compile: true compiles the model with torch.compile, whose GPU code generator needs "
            f"Triton, and the 'triton' package is not installed; install the one your torch build names {fix}"
        )


def saved_run_config(checkpoint: Path) -> dict[str, Any]:
    """The resolved run config the trainer saved with the checkpoint (config.yaml)."""
    path = checkpoint / "config.yaml"
    try:
        # read no further than a config file's cap, and never from a named pipe: a crafted checkpoint's manifest
        # can match a config.yaml of any size
        saved = yaml_safe.safe_load(read_capped(path, MAX_CONFIG_FILE_BYTES).decode("utf-8"))
    except (OSError, yaml_safe.YAMLError, *UNPARSABLE) as err:
        why = yaml_safe.describe(err) if isinstance(err, yaml_safe.YAMLError) else err
        raise NgptConfigError(
            f"--resume {checkpoint}: its config.yaml cannot be read ({why}); the checkpoint was "
            "not written by the ngpt_ds trainer or is damaged"
        ) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise NgptConfigError(
            f"--resume {checkpoint}: {path} holds no 'model:' section; the checkpoint was not "
            "written by the ngpt_ds trainer"
        )
    if not _expands_to_at_most(saved, _SAVED_CONFIG_NODES):
        # YAML aliases nest 9^9 items in 10 lines, read in a blink as shared references; but each message that
        # showed a field (a data_dir, a model field that differs) expanded it: minutes and gigabytes per resume.
        raise NgptConfigError(
            f"--resume {checkpoint}: {path} expands to more than {_SAVED_CONFIG_NODES} values (YAML aliases "
            "nested into each other); the trainer writes a few hundred, so the file was crafted or damaged"
        )
    return saved


_SAVED_CONFIG_NODES = 100_000


def _expands_to_at_most(value: Any, limit: int) -> bool:
    """Whether `value`, with every shared (aliased) list or mapping counted at each place it appears, holds at
    most `limit` keys, items and values. Stops counting at the limit."""
    pending, seen = [value], 0
    while pending:
        item = pending.pop()
        seen += 1
        if seen > limit:
            return False
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return True


def check_resume_fits(checkpoint: Path, model: ModelConfig, data: DatasetMeta) -> None:
    """Raise NgptConfigError naming every model field that differs from the checkpoint's, the
    tokenizer when the data was prepared with another one, or the data when its train split is not
    the one the checkpoint was trained on."""
    saved = saved_run_config(checkpoint)
    fix = (
        f"Resume with the checkpoint's config and data (data_dir {recorded_data_dir(saved)}), or start a new run "
        "with another --out (or --resume none)"
    )
    current = model.to_dict()
    differ = [name for name, value in current.items() if saved["model"].get(name, value) != value]
    if differ:
        parts = [f"model.{name} = {saved['model'][name]!r} in the checkpoint, {current[name]!r} now" for name in differ]
        why = f" (vocab_size comes from the tokenizer of --data {data.data_dir})" if "vocab_size" in differ else ""
        raise NgptConfigError(
            f"--resume {checkpoint}: the checkpoint does not fit this run: {'; '.join(parts)}{why}. {fix}"
        )
    recorded = saved.get("tokenizer_sha256") or _tokenizer_of(recorded_data_dir(saved))
    if recorded and recorded != data.tokenizer_sha256:
        raise NgptConfigError(
            f"--resume {checkpoint}: --data {data.data_dir} was tokenized with another tokenizer (sha256 "
            f"{data.tokenizer_sha256[:12]}…) than the checkpoint's training data (sha256 {recorded[:12]}…), "
            f"although both have {data.vocab_size} pieces: the same token ids would mean different text. Prepare "
            "the data with the checkpoint's tokenizer (launch/prepare_data.py --tokenizer FILE.model), or start a "
            "new run with another --out (or --resume none)"
        )
    # Absent in checkpoints written before it was recorded; None without block hashes (either side).
    trained_on, now = saved.get("train_data_sha256"), train_data_fingerprint(data)
    if trained_on and now and trained_on != now:
        raise NgptConfigError(
            f"--resume {checkpoint}: --data {data.data_dir} holds other training data than the checkpoint was "
            f"trained on (data_dir {recorded_data_dir(saved)}): the shards, token counts or block hashes of its train "
            "split differ from those recorded in the checkpoint's config.yaml (train_data_sha256), so the saved "
            "data position would point into other windows, re-reading text the run has seen and skipping text it "
            "has not. Resume with the checkpoint's dataset (a copy elsewhere is fine), or start a new run with "
            "another --out (or --resume none)"
        )


def train_data_fingerprint(data: DatasetMeta) -> str | None:
    """sha256 of what the data order reads: the train split's shard files, token counts and block hashes
    (meta.json), and dtype and EOS id. Reading no shard, it costs nothing at any size; a dataset moved or
    copied elsewhere keeps it. None when a train shard carries no block hashes (a dataset prepared before
    ngpt_ds recorded them): `--add-hashes` on it between a run and its resume must not refuse the resume,
    and the loader's window count is the check there."""
    return split_fingerprint(data, "train")


def check_resume_seed(checkpoint: Path, seed: int) -> None:
    """Raise NgptConfigError when train.seed is not the checkpoint's (its config.yaml)."""
    saved = (saved_run_config(checkpoint).get("train") or {}).get("seed")
    if isinstance(saved, int) and saved != seed:
        raise NgptConfigError(
            f"--resume {checkpoint}: train.seed = {saved} in the checkpoint, {seed} now: the seed orders the "
            "training data and the checkpoint's data position counts windows in its order, so another seed would "
            f"re-read windows the run has seen and skip others. Resume with train.seed: {saved}, or start a new "
            "run with another --out (or --resume none)"
        )


def check_resume_precision(checkpoint: Path, ds_config: dict[str, Any], ds_source: str) -> None:
    """Raise NgptConfigError when this run's precision (fp32, bf16, fp16) is not the checkpoint's."""
    saved = saved_run_config(checkpoint).get("deepspeed")
    if not isinstance(saved, dict):  # not recorded: DeepSpeed's load is the check
        return
    before, now = precision_of(saved), precision_of(ds_config)
    if before != now:
        raise NgptConfigError(
            f"--resume {checkpoint}: the checkpoint was trained in {before} (the deepspeed section of its "
            f"config.yaml) and --deepspeed_config {ds_source} trains in {now}: DeepSpeed keeps the optimizer state "
            f"in another form for each precision and cannot load one into the other. Resume in {before} "
            f"(the bf16 / fp16 'enabled' switches in {ds_source}), or start a new run with another --out "
            "(or --resume none)"
        )


def recorded_data_dir(saved: dict[str, Any]) -> str | None:
    """A saved run config's dataset: data_dir made absolute where training ran (data_dir_absolute), else data_dir
    as given (checkpoints written before it was recorded), which from another folder may name another dataset."""
    absolute = saved.get("data_dir_absolute")
    return absolute if isinstance(absolute, str) and absolute else saved.get("data_dir")


def _tokenizer_of(data_dir: str | None) -> str | None:
    """Checkpoints written before config.yaml recorded tokenizer_sha256: their dataset's, if it is here."""
    if not data_dir:
        return None
    try:
        return load_dataset_meta(data_dir, verify_tokenizer_hash=False, verify_contents=False).tokenizer_sha256
    except NgptConfigError:
        return None
