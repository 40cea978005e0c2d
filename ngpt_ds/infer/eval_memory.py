"""Memory of evaluate's longest forward, estimated from shapes before the model loads.

--contexts / --multiples may ask for contexts far beyond the trained seq_len on purpose (the paper's
length-extrapolation test). A forward over batch x context tokens holds batch x context x vocab logits (and
their fp32 log-softmax in the loss): a context of 200000 tokens with a 32k vocabulary is 26 GB per window in
fp32. It ran out of memory only after the model and data had loaded, or the kernel's OOM killer ended the
process with no message. `check_forward_memory` refuses it at startup instead, naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import ModelConfig

GIB = 2**30
SLACK = 64 * 2**20


@dataclass(frozen=True)
class ForwardMemory:
    weights: int
    """The model's parameters in the forward's dtype."""
    activations: int
    """The largest working set of one forward: the loss path's logits or one block's activations."""

    @property
    def total(self) -> int:
        return self.weights + self.activations


def parameter_count(config: ModelConfig) -> int:
    from ngpt_ds.infer.loading import config_shapes  # built on the meta device: nothing allocated

    count = 0
    for shape in config_shapes(config).values():
        n = 1
        for size in shape:
            n *= size
        count += n
    return count


def forward_memory(config: ModelConfig, batch: int, context: int, dtype_bytes: int) -> ForwardMemory:
    """Peak memory of evaluate's forward and loss (ngpt_ds.infer.evaluate.window_loss) on `batch` windows of
    `context` tokens, from the shapes. Under torch.no_grad each block's activations are freed when the next
    starts, so the peak is the larger of:
      - the loss path: logits [B, T, V] in the model's dtype, their fp32 copy (when the dtype is narrower) and
        cross_entropy's fp32 log-softmax, all alive at once;
      - the head: its matmul output and the s_z-scaled logits it returns (nGPT);
      - one block: the residual stream and its update, normalized copies, q k v, the SwiGLU's 2 x hidden
        up-projection and its hidden product. SDPA's causal kernels (flash / memory-efficient on a GPU, the
        flash kernel on a CPU) keep O(T) per head, no T x T scores.
    """
    tokens = batch * context
    e, d, hidden, vocab = dtype_bytes, config.n_embd, config.mlp_width, config.vocab_size or 0
    loss = tokens * vocab * (e + 4 + (4 if e != 4 else 0))
    head = tokens * vocab * e * 2
    block = tokens * (8 * d + 3 * hidden) * e
    residual = tokens * d * e  # the final hidden states, alive under the head
    # SLACK: measured peaks ran 10-33 MiB above the shapes' sum (kernels' scratch, the allocator; README).
    return ForwardMemory(parameter_count(config) * e, max(loss, head, block) + residual + SLACK)


def read_model_config(path: str | Path) -> ModelConfig | None:
    """The model config of an export, checkpoint or run directory, without reading a weight; None where it cannot
    be read (loading it then names what is wrong, with its fix)."""
    from ngpt_ds.infer.export_config import read_export_config
    from ngpt_ds.infer.export_layout import is_export
    from ngpt_ds.infer.loading import _model_config
    from ngpt_ds.infer.run_checkpoint import read_run_config

    try:
        if is_export(path):
            values = read_export_config(Path(path)).get("model")
        else:
            checkpoint = _newest_unverified(Path(path))
            if checkpoint is None:
                return None
            values = read_run_config(checkpoint).get("model")
        return _model_config(values, str(path))
    except (NgptConfigError, OSError, ValueError, TypeError, KeyError):
        return None


def _newest_unverified(path: Path) -> Path | None:
    """The checkpoint whose config.yaml gives the estimate: `path` itself (a step_N) or the newest complete one of a run
    or checkpoints folder, NOT verified against its manifest. Loading the model verifies it (run_checkpoint.
    resolve_checkpoint); doing it here too had read every file of the checkpoint twice before the evaluation started,
    and printed its warnings twice. Every checkpoint of a run has the same model config, so a damaged newest one that
    the load then skips changes no estimate."""
    from ngpt_ds.train import checkpoint_layout

    if checkpoint_layout.is_step_dir(path):
        return path
    for folder in (path, path / checkpoint_layout.CHECKPOINTS):
        complete = checkpoint_layout.complete_checkpoints(folder)
        if complete:
            return complete[-1]
    return None


def available_memory(device: torch.device) -> int:
    """Bytes a forward may still allocate: free GPU memory (torch.cuda.mem_get_info) or available RAM (psutil)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    from ngpt_ds.model.saved_weights import host_memory_available

    # Also what `ulimit -v` and the cgroup (a Slurm job's, a container's) leave: psutil counts the whole machine.
    held = host_memory_available()
    available = int(psutil.virtual_memory().available)
    return available if held is None else min(available, held)


CLI_OPTIONS = ("--batch-size", "--contexts / --multiples")
"""How check_forward_memory's fix names the batch size and the contexts: evaluate.py's options."""


def check_forward_memory(
    config: ModelConfig,
    contexts: list[int],
    batch: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    loaded: bool = False,
    options: tuple[str, str] = CLI_OPTIONS,
) -> None:
    """Refuse a longest-context forward whose estimate exceeds the available memory: before the model loads (its
    weights counted), or with the model `loaded` (its weights already hold memory: the forward's activations only).
    `options` name the batch size and the contexts in the fix: evaluate.py's options, or evaluate()'s arguments."""
    context = max(contexts)
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    need = forward_memory(config, batch, context, dtype_bytes)
    have = available_memory(device)
    needed = need.activations if loaded else need.total
    if needed <= have:
        return
    where = "free on " + str(device) if device.type == "cuda" else "RAM available"
    one = forward_memory(config, 1, context, dtype_bytes)  # activations grow with the batch, weights do not
    fits = (have - (0 if loaded else one.weights)) // one.activations if one.activations else batch
    batch_option, contexts_option = options
    fix = f"use {batch_option} {fits} or less" if 1 <= fits < batch else f"use shorter contexts ({contexts_option})"
    what = "the loaded model's forward" if loaded else "the model"
    raise NgptConfigError(
        f"context {context}: a forward of {batch} window(s) needs about {needed / GIB:.2f} GiB (logits "
        f"{batch} x {context} x {config.vocab_size} and {what}), {have / GIB:.2f} GiB {where}; {fix}, or "
        "fewer contexts"
    )
