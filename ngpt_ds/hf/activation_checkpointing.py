"""transformers' activation checkpointing (`model.gradient_checkpointing_enable()`, `Trainer`'s
`gradient_checkpointing=True`) for the HF wrapper (modeling_ngpt): it sets the wrapped model's own
`checkpoint_every` (ngpt_ds.model.lm), which recomputes every n-th block in backward with the same gradients.
transformers refused it before ("NGPTForCausalLM does not support activation checkpointing"). The HF export
copies this file next to modeling_ngpt.py, as it follows the imports."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from torch import nn

if TYPE_CHECKING:
    from ngpt_ds.model.lm import CausalLM


class ActivationCheckpointing:
    """Mixin of the HF models: transformers' enable/disable calls land in _set_gradient_checkpointing."""

    supports_gradient_checkpointing = True
    gradient_checkpointing = False
    """transformers' is_activation_checkpointing reads this flag on the model's modules."""

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Any = None, every_n_layers: int = 1
    ) -> None:
        """Checkpoint blocks 0, n, 2n, ... (every_n_layers = n), or none. The recomputation is ngpt_ds's own
        non-reentrant torch checkpoint (the one launch/train.py's activation_checkpointing runs), so
        `gradient_checkpointing_func` and its kwargs are not used."""
        if enable and (isinstance(every_n_layers, bool) or not isinstance(every_n_layers, int) or every_n_layers < 1):
            raise ValueError(f"every_n_layers must be an integer >= 1, not {every_n_layers!r}")
        wrapped = cast("CausalLM", self.model)  # type: ignore[attr-defined]  # the HF model's wrapped ngpt_ds model
        wrapped.checkpoint_every = every_n_layers if enable else 0
        self.gradient_checkpointing = enable


def cache_while_training(model: nn.Module, use_cache: bool, cache: Any) -> bool:
    """use_cache for a forward: False while training with checkpointing and no cache passed in, as transformers'
    Llama sets it, since a forward that fills a KV cache runs its blocks without checkpointing (the recomputation
    would append to the cache twice)."""
    checkpointing = getattr(model, "gradient_checkpointing", False) and model.training
    return use_cache and not (checkpointing and cache is None)
