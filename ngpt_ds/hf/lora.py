"""PEFT's LoRA on ngpt_ds's transformers models, keeping nGPT's matrices on the hypersphere.

PEFT adapts torch.nn.Linear and a few other layer types; ngpt_ds's projections (ngpt_ds.model.layers.Projection:
q/k/v `qkv`, attention `out`, MLP `up_gate` and `down`, the head) are none of them, so `get_peft_model` stopped with
PEFT's "Target module Projection(...) is not supported". `sphere_lora(LoraConfig(...))` registers the layer below
for them (PEFT's custom-module API, LoraConfig._register_custom_module).

nGPT keeps every matrix unit norm along its d_model side (section 2.6 of the paper; docs/ngpt_notes.md): q and k
entries are cosines, s_u, s_v (eqs. 20-21) and s_z (eq. 24) scale cosines. A plain LoRA update W + BA leaves those
rows (columns for `out` and `down`) off the sphere: the adapted model is then no nGPT, and its merged weights are
refused by from_pretrained (off the sphere). So the adapted matrix of an nGPT projection here is Norm(W + BA),
normalized along the same dim as the training's renormalization: the forward uses it, and merging writes exactly
it, so `merge_and_unload()` gives an nGPT whose logits are the adapted model's and whose matrices are unit norm.
At init (B = 0) the adapted model is the base model. The GPT baseline's projections (no sphere) get plain LoRA.

What cannot hold under the normalization is refused when the adapter is made, naming the fix: `lora_dropout`
(dropout acts on the adapter's input, not on a weight that is then normalized), DoRA and the other LoRA variants,
`lora_bias` (ngpt_ds's projections have no bias), and PEFT's `target_parameters` on a projection's weight.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from ngpt_ds.hf.lora_low_rank import sphere_lora_linear
from ngpt_ds.model.layers import Projection, scaled_linear

__all__ = ["SphereLoraProjection", "load_sphere_lora", "sphere_lora"]


def sphere_lora(config: LoraConfig) -> LoraConfig:
    """`config` with SphereLoraProjection registered for ngpt_ds's projections; returns it (the same object), for
    `get_peft_model(model, sphere_lora(LoraConfig(target_modules=["qkv", "out", "up_gate", "down"], ...)))`."""
    config._register_custom_module({Projection: SphereLoraProjection})
    return config


def load_sphere_lora(model: nn.Module, folder: Any, **kwargs: Any) -> PeftModel:
    """PeftModel.from_pretrained(model, folder, **kwargs) for an adapter saved from a sphere_lora model: PEFT's saved
    adapter_config.json does not hold the custom-module registration, so a plain from_pretrained stops with
    "Target module Projection(...) is not supported"."""
    config = sphere_lora(LoraConfig.from_pretrained(str(folder)))
    return PeftModel.from_pretrained(model, folder, config=config, **kwargs)


class SphereLoraProjection(LoraLinear):
    """PEFT's LoRA layer around a Projection. On the sphere (nGPT): y = x Norm(W + sum of the active adapters'
    B A scaling)^T (times row_scale when given: s_u, s_v, s_z), the norm along the projection's layout.norm_dim, in
    float32 at least; merging writes that matrix into W. Off the sphere (the GPT baseline): PEFT's own LoRA.

    The forward computes that product without forming W + BA (ngpt_ds/hf/lora_low_rank.py): only vectors and
    matrices with one side r, so an adapted layer costs about what PEFT's plain LoRA costs."""

    #: True: the forward forms Norm(W + BA) whole, as merge does (the reference the low-rank form is checked
    #: against in tests/test_hf39_lora_low_rank.py and measured against in bench/lora_memory.py)
    whole_matrix = False

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, **kwargs: Any) -> None:
        if kwargs.get("parameter_name") is not None:
            raise ValueError(
                "LoRA on an nGPT projection's weight through target_parameters is not supported (the adapted matrix "
                "would leave the sphere): name the module in target_modules instead (qkv, out, up_gate, down)"
            )
        super().__init__(base_layer, adapter_name, config=config, **kwargs)
        #: per merge, the adapters it merged and the norms it divided by, so that unmerge restores W
        self._sphere_merges: list[tuple[list[str], torch.Tensor]] = []

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        """A Projection's own (PEFT's guess reads the same attributes, after warning "Unsupported layer type")."""
        assert isinstance(module, Projection), type(module)
        return module.in_features, module.out_features

    @property
    def on_sphere(self) -> bool:
        return bool(getattr(self.get_base_layer(), "on_sphere", False))

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs: Any) -> None:
        """PEFT's, refusing on the sphere (before any adapter weight is made) what Norm(W + BA) cannot honour."""
        if self.on_sphere:
            _refuse_unnormalizable(config)
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)
        if self.on_sphere and self.lora_variant.get(adapter_name) is not None:
            variant = type(self.lora_variant[adapter_name]).__name__
            raise ValueError(
                f"LoRA variant {variant} (DoRA, aLoRA, ... in LoraConfig) cannot be used on nGPT: ngpt_ds's LoRA "
                "layer keeps the adapted matrices on the sphere (Norm(W + BA)) and implements plain LoRA only. "
                "Leave those options unset"
            )

    def _projection(self) -> Projection:
        base = self.get_base_layer()
        assert isinstance(base, Projection), type(base)
        return base

    def _adapted(self, adapters: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(Norm(W + the adapters' deltas), the norms divided by), in float32 (float64 for float64 weights)."""
        base = self._projection()
        dtype = torch.promote_types(base.weight.dtype, torch.float32)
        w = base.weight.to(dtype)
        for adapter in adapters:
            w = w + self.get_delta_weight(adapter).to(dtype)
        norms = torch.linalg.vector_norm(w, dim=base.layout.norm_dim, keepdim=True)
        return w / norms.clamp_min(torch.finfo(dtype).tiny), norms

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.on_sphere:
            row_scale = args[0] if args else kwargs.get("row_scale")
            if row_scale is None:
                return super().forward(x, *args, **kwargs)
            # (x (W + BA)^T) * s: PEFT's LoRA adds its term after the base layer, unscaled.
            return super().forward(x) * row_scale.to(x.dtype)
        if "adapter_names" in kwargs:
            raise TypeError("ngpt_ds's sphere LoRA layer does not take PEFT's mixed adapter batches (adapter_names)")
        base = self._projection()
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return base(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.lora_A]
        if self.merged or not active:
            return base(x, *args, **kwargs)
        row_scale = args[0] if args else kwargs.get("row_scale")
        if self.whole_matrix:
            weight, _ = self._adapted(active)
            return scaled_linear(x, weight.to(base.weight.dtype), row_scale)
        # the active adapters' deltas summed as one product: [s_1 B_1, s_2 B_2, ...] @ [A_1; A_2; ...]
        left = torch.cat([_weight(self.lora_B[name]) * self.scaling[name] for name in active], dim=1)
        right = torch.cat([_weight(self.lora_A[name]) for name in active], dim=0)
        return sphere_lora_linear(x, base.weight, left, right, base.layout.norm_dim, row_scale)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """W <- Norm(W + the adapters' deltas): the matrix the forward used, on the sphere (safe_merge: refused
        unless finite, W untouched)."""
        if not self.on_sphere:
            super().merge(safe_merge=safe_merge, adapter_names=adapter_names)
            return
        names = [name for name in check_adapters_to_merge(self, adapter_names) if name in self.lora_A]
        if not names:
            return
        weight = self._projection().weight
        with torch.no_grad():
            merged, norms = self._adapted(names)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {names} seems to be broken")
            weight.data = merged.to(weight.dtype)
        self._sphere_merges.append((names, norms))
        self.merged_adapters.extend(names)

    def unmerge(self) -> None:
        """W <- Norm(W + deltas) * norms - deltas, merge by merge (to rounding), as PEFT's unmerge subtracts."""
        if not self.on_sphere:
            super().unmerge()
            return
        weight = self._projection().weight
        with torch.no_grad():
            while self._sphere_merges:
                names, norms = self._sphere_merges.pop()
                dtype = norms.dtype
                w = weight.to(dtype) * norms
                for name in names:
                    w = w - self.get_delta_weight(name).to(dtype)
                weight.data = w.to(weight.dtype)
                for name in names:
                    self.merged_adapters.remove(name)

    def __repr__(self) -> str:
        return "sphere_" + super().__repr__()


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor), type(module)
    return weight


def _refuse_unnormalizable(config: LoraConfig) -> None:
    """ValueError, naming the setting and the fix, for what Norm(W + BA) cannot honour (see the module docstring)."""
    if config.lora_dropout:
        raise ValueError(
            f"lora_dropout={config.lora_dropout} cannot be used on nGPT: its adapted matrices are Norm(W + BA) "
            "(unit norm, as nGPT's), and dropout on the adapter's input has no such matrix. Pass lora_dropout=0"
        )
    if config.lora_bias:
        raise ValueError("lora_bias=True cannot be used on nGPT: its projections have no bias. Pass lora_bias=False")
