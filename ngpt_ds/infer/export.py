"""Consolidated export: a trainer checkpoint -> one portable model folder.

    EXPORT/
      model.safetensors   fp32 weights, one tensor per parameter (names as in the model's state_dict)
      config.json         format, model config, tokenizer hash, provenance, sphere check
      tokenizer.model     the sentencepiece model the training data was prepared with
      README.md           what this is and how to use it

The folder is written next to its final place and renamed into it when complete, then read back
and compared with what was written. `overwrite` replaces only an earlier export, never the
checkpoint being read or a folder around it (ngpt_ds.overwrite). nGPT weights are checked unit norm on the way in (loading)
and the measured deviation is recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ngpt_ds.data.staging import publish_target, remove_staging, restore_set_aside, staging_dir, swap_in
from ngpt_ds.errors import UNPARSABLE, NgptConfigError, require_extra
from ngpt_ds.infer.export_config import config_record, read_config_json
from ngpt_ds.infer.export_layout import CONFIG_FILE, EXPORT_FORMAT, EXPORT_VERSION, TOKENIZER_FILE, WEIGHTS_FILE
from ngpt_ds.infer.loading import LoadedModel, checkpoint_tokenizer, load_checkpoint, load_export
from ngpt_ds.infer.run_checkpoint import removed_while_read, resolve_checkpoint
from ngpt_ds.model import max_norm_deviation, sphere_matrices
from ngpt_ds.overwrite import check_not_source, check_replaceable

README_TEMPLATE = """\
# {name}

{article} {arch_name} language model trained with ngpt_ds, exported from `{checkpoint}` (step {step}).

- Architecture: {n_layer} layers, d_model {n_embd}, {n_head} heads, trained context {seq_len} tokens,
  vocabulary {vocab_size} (sentencepiece, `tokenizer.model`).
- Weights: `model.safetensors`, float32; the model config is in `config.json`.
{sphere_line}
Use it with ngpt_ds (no DeepSpeed needed):

    python launch/generate.py {folder} --prompt "In the beginning"
    python launch/evaluate.py {folder} --data DATASET_DIR
    ngpt-lm-eval --model ngpt_ds --model_args path={folder} --tasks arc_easy

or in Python: `ngpt_ds.infer.load("{folder}")`.
"""


def _config_json(loaded: LoadedModel, deviation: float) -> dict:
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "model": loaded.config.to_dict(),
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "sha256": loaded.tokenizer_sha256,
            "vocab_size": loaded.tokenizer.vocab_size,
            "eos_id": loaded.tokenizer.eos_id,
        },
        "weights": {"file": WEIGHTS_FILE, "dtype": "float32"},
        "sphere": {
            "max_norm_deviation": deviation,
            "matrices": {m.name: m.norm_dim for m in sphere_matrices(loaded.model)},
        },
        "training": loaded.info,
    }


FORMATS = ("ngpt_ds", "hf")
"""ngpt_ds: the layout above. hf: transformers' standard layout (ngpt_ds.hf.export)."""


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    tokenizer: str | Path | None = None,
    format: str = "ngpt_ds",
) -> Path:
    """Consolidate `checkpoint` (a step_N directory or a run directory: its newest complete checkpoint)
    into the folder `out`, in `format` (FORMATS). Returns `out`, absolute."""
    out = publish_target(out)
    if format not in FORMATS:
        raise NgptConfigError(f"export format {format!r} is not one of {', '.join(FORMATS)}")
    if format == "hf":
        require_extra("transformers", "hf", "--format hf")
    restore_set_aside(out)  # an earlier --overwrite killed mid-swap: its export is put back first
    if out.exists() and not overwrite:
        raise NgptConfigError(f"{out} already exists; choose another folder or pass --overwrite")
    source = resolve_checkpoint(checkpoint)
    check_replaceable(
        out,
        kind="an exported model",
        marker=f"{CONFIG_FILE} with format {EXPORT_FORMAT!r}",
        holds_kind=_is_export_folder,
        sources=[(source, "the checkpoint being exported")],
    )
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    # A locked staging folder (as a dataset's): one a killed export left is removed by the next export of
    # `out` (a temporary folder was never cleaned: a full copy of the weights per kill), and it is made
    # with the umask's mode, where a temporary folder's 0700 became the export's, unreadable by the group.
    # Made before the checkpoint is read: a read-only or missing destination is named at once, not after
    # minutes of consolidating the weights.
    try:
        tmp = staging_dir(out)
    except OSError as err:
        raise NgptConfigError(
            f"cannot export to {out}: its folder {out.parent} cannot be written ({_reason(err)}); choose another --out"
        ) from None
    try:
        if format == "hf":
            from ngpt_ds.hf.tokenizer import build_hf_tokenizer

            # A tokenizer the hf format refuses (unigram) is named now, not after the weights are consolidated.
            with removed_while_read(source):  # a training run's retention may delete it meanwhile
                early = checkpoint_tokenizer(source, tokenizer)
            build_hf_tokenizer(early.path, early.model_bytes)
        loaded = load_checkpoint(source, device="cpu", dtype="float32", tokenizer=tokenizer)
        check_not_source(out, [(loaded.tokenizer.path, "the tokenizer being exported")])
        deviation = max_norm_deviation(loaded.model)
        state = {name: t.detach().contiguous().clone() for name, t in loaded.model.state_dict().items()}
        try:
            if format == "hf":
                from ngpt_ds.hf.export import verify_hf_export, write_hf_export

                verify_hf_export(tmp, write_hf_export(loaded, tmp, name=out.name), loaded.config.arch)
            else:
                save_file(
                    state,
                    str(tmp / WEIGHTS_FILE),
                    metadata={"format": "pt", "ngpt_ds": EXPORT_FORMAT, **config_record(loaded.config)},
                )
                # safetensors creates its file 0600 whatever the umask: the weights of an export in a shared
                # folder were unreadable by the group that could read the rest of it.
                (tmp / WEIGHTS_FILE).chmod(0o666 & ~_umask())
                # The bytes loaded and checked, which config.json's sha256 is of; not the file at the path now.
                (tmp / TOKENIZER_FILE).write_bytes(loaded.tokenizer.model_bytes)
                config = _config_json(loaded, deviation)
                (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
                (tmp / "README.md").write_text(_readme(loaded, deviation, out), encoding="utf-8")
                _verify(tmp, state)
        except (OSError, SafetensorError) as err:
            # A full disk (ENOSPC, from safetensors as its own error) or a filesystem turned read-only: named
            # with the folder, where it was a traceback after all the loading work.
            raise NgptConfigError(
                f"cannot export to {out}: writing in {out.parent} failed ({_reason(err)}); nothing was exported. "
                "Free space there or choose another --out"
            ) from None
        if out.exists() and not overwrite:  # another export of `out` finished meanwhile: not ours to replace
            raise NgptConfigError(f"{out} appeared while exporting; choose another folder or pass --overwrite")
        # An earlier export at `out` (checked above: never the source) is exchanged in one step, so a kill
        # never leaves `out` missing with the old export hidden under a temporary name.
        swap_in(tmp, out, overwrite=overwrite)  # and refused if another export takes `out` from here on
    finally:
        remove_staging(tmp)  # after swap_in, nothing is left to remove
    return out


def _reason(err: BaseException) -> str:
    """An OSError's reason without its repeated path ('No space left on device'), else the error's text."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def _is_export_folder(folder: Path) -> bool:
    """Whether `folder` holds an export: a config.json carrying the export format marker (any version)."""
    if not (folder / CONFIG_FILE).is_file():  # a named pipe there made --overwrite wait forever on reading it
        return False
    try:
        config = read_config_json(folder / CONFIG_FILE)  # no further than any export's (a sparse 8 GiB file)
    except (OSError, *UNPARSABLE):
        return False
    # `--format hf` exports carry their marker under another key (ngpt_ds.hf.export.HF_MARKER).
    return isinstance(config, dict) and (
        config.get("format") == EXPORT_FORMAT or isinstance(config.get("ngpt_ds_export"), dict)
    )


def _verify(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Read the folder back as a user would; the weights must be bit-identical to what was written."""
    reloaded = load_export(folder, device="cpu")
    for name, tensor in reloaded.model.state_dict().items():
        if not torch.equal(tensor, state[name]):
            raise NgptConfigError(
                f"export to {folder}: {name} reads back different from what was written "
                "(disk full or a failing file system?)"
            )


def _readme(loaded: LoadedModel, deviation: float, out: Path) -> str:
    m = loaded.config
    sphere_line = (
        f"- nGPT: every embedding and projection is unit norm along its declared dim (largest deviation "
        f"{deviation:.1e}, checked at export).\n"
        if m.is_ngpt
        else ""
    )
    return README_TEMPLATE.format(name=out.name, **loaded.card_fields(), sphere_line=sphere_line, folder=out)


def _umask() -> int:
    """The process's umask (read by setting it back at once: os has no getter)."""
    current = os.umask(0o022)
    os.umask(current)
    return current
