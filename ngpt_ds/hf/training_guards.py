"""Training guards of the HF wrapper (modeling_ngpt), kept apart from the model itself: the process-wide hook
that renormalizes nGPT's sphere matrices after every torch optimizer step (paper section 2.6), and the checks a
training forward runs to refuse training that hook cannot keep on the sphere (DeepSpeed's or FSDP's flat
copies without ngpt_ds's KeepOnTheSphere callback) or that would not train (16-bit scaling vectors), and the check
that save_pretrained does not write DeepSpeed's empty ZeRO-3 partitions as the weights. The HF export copies this
file next to modeling_ngpt.py, as it follows the imports."""

from __future__ import annotations

import sys
import weakref
from typing import Any, cast

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.layers import DeclaredMatrix, ScaleVector
from ngpt_ds.model.sphere import sphere_matrices

_SPHERE_MODELS: weakref.WeakSet[nn.Module] = weakref.WeakSet()
"""The nGPT models of this module alive in the process, whose sphere matrices _renormalize_after_step keeps."""


def _keep_on_the_sphere(model: nn.Module) -> None:
    """Registers `model` for renormalization after every step of any torch optimizer holding its sphere matrices
    (one process-wide hook, added with the first nGPT model). nGPT's training renormalizes them after every
    optimizer step (section 2.6 of the paper; ngpt_ds's trainer does it in its own hook); an nGPT fine-tuned with
    transformers' Trainer or a plain torch loop was not: the matrices drifted off the sphere (0.0111 after three
    AdamW steps at lr 1e-3), so the model trained was no nGPT, and from_pretrained refused what it saved."""
    global _STEP_HOOK
    _SPHERE_MODELS.add(model)
    if _STEP_HOOK is None:
        _STEP_HOOK = (
            register_optimizer_step_pre_hook(_refuse_unreached_masters),
            register_optimizer_step_post_hook(_renormalize_after_step),
        )


_STEP_HOOK: Any = None


@torch.no_grad()
def _renormalize_after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """W <- W / ||W|| along its norm dim, in fp32, for each sphere matrix that `optimizer` updates (the others did
    not move): the renormalization of ngpt_ds.model.sphere.normalize_matrices_, after the step as in training. An
    optimizer holding none (the GPT baseline's, another model's, DeepSpeed's or FSDP's flat copies) costs a set."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for model in list(_SPHERE_MODELS):
        for matrix in sphere_matrices(model):
            if id(matrix.param) in held:
                held.discard(id(matrix.param))  # once: a copy.copy of a model shares its parameters
                w = matrix.param.float()
                norms = torch.linalg.vector_norm(w, dim=matrix.norm_dim, keepdim=True)
                matrix.param.copy_(w / norms.clamp_min(torch.finfo(torch.float32).tiny))


@torch.no_grad()
def _refuse_unreached_masters(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Refuses, before it updates anything, a step of `optimizer` over DeepSpeed's fp32 masters (ZeRO 1/2, its
    BF16_Optimizer) of an nGPT that nothing renormalizes: a parameter's live `_hp_mapping` links it to a slice of a
    flat partition that `optimizer` holds. The training forward cannot tell that case (_check_renormalized_here):
    DeepSpeed leaves the same mapping on the parameters of a model whose engine is no longer stepping them, and a
    plain torch fine-tune of that model (after engine.destroy(), which sets the mappings to None, or of the same model
    object beside the idle engine) was refused as DeepSpeed training. Each rank holds a mapping into its own
    partition, so every rank refuses alike. A few attribute reads per step."""
    held: set[int] | None = None
    for model in list(_SPHERE_MODELS):
        if getattr(model, "_ngpt_ds_sphere_hook", None) is not None:
            continue  # ngpt_ds.hf.trainer.keep_on_the_sphere renormalizes the masters
        for matrix in sphere_matrices(model):  # not LoRA's adapters (ngpt_ds.hf.lora), nor the scaling vectors
            fragment = getattr(getattr(matrix.param, "_hp_mapping", None), "hp_fragment", None)
            if fragment is None or fragment.numel() == 0:
                continue
            if held is None:
                held = {p.untyped_storage().data_ptr() for group in optimizer.param_groups for p in group["params"]}
            if fragment.untyped_storage().data_ptr() in held:
                raise NgptConfigError(_deepspeed_refusal(type(model).__name__))


def _deepspeed_refusal(name: str) -> str:
    return (
        f"{name} is being trained under DeepSpeed, whose optimizer updates fp32 copies of the weights that the "
        "renormalization after each optimizer step cannot reach: the nGPT matrices would leave the hypersphere "
        "(paper section 2.6). With transformers' Trainer add ngpt_ds's callback: "
        "`from ngpt_ds.hf.trainer import KeepOnTheSphere; trainer.add_callback(KeepOnTheSphere(trainer))` "
        "(it renormalizes DeepSpeed's fp32 masters after every step), or fine-tune with ngpt_ds's launch/train.py"
    )


def _check_renormalized_here(model: Any) -> None:
    """Refuses to train an nGPT where _renormalize_after_step cannot reach the weights the optimizer updates:
    DeepSpeed's ZeRO 3 keeps them as flat fp32 partitions (its parameters carry ds_id), and so does its bf16/fp16
    optimizer; FSDP flattens and shards them. The model then left the sphere without a word (ZeRO 1-3 through
    transformers' Trainer: 0.005 off unit norm after 3 AdamW steps at lr 1e-3). ZeRO 1/2 in fp32 is refused at its
    first optimizer step instead (_refuse_unreached_masters): its mark on the parameters (_hp_mapping) outlives the
    engine, so it does not tell a forward of DeepSpeed's training from one of a plain fine-tune afterwards. Under
    DeepSpeed, ngpt_ds's KeepOnTheSphere callback (ngpt_ds.hf.trainer) renormalizes the fp32 masters as ngpt_ds's
    trainer does, and marks the model. A few attribute reads per training forward."""
    if getattr(model, "_ngpt_ds_sphere_hook", None) is not None:
        return
    weight = cast(DeclaredMatrix, model.model.embed).weight
    if not weight.requires_grad and not _any_sphere_matrix_trains(model):
        return  # LoRA (ngpt_ds.hf.lora): no optimizer holds a sphere matrix, the adapters keep Norm(W + BA)
    state = sys.modules.get("accelerate.state")
    shared = getattr(getattr(state, "AcceleratorState", None), "_shared_state", None) or {}
    kind = str(getattr(shared.get("distributed_type"), "value", ""))
    name = type(model).__name__
    if hasattr(weight, "ds_id") or (kind == "DEEPSPEED" and weight.dtype != torch.float32):
        raise NgptConfigError(_deepspeed_refusal(name))
    if weight.dtype != torch.float32 and weight.requires_grad and _deepspeed_running():
        # ZeRO 0 in bf16/fp16 set up by deepspeed.initialize itself (no accelerate state, no mark on the weights):
        # DeepSpeed's FP16 optimizers keep fp32 masters. Before, only the 16-bit scaling vectors' refusal stopped it,
        # with advice DeepSpeed cannot follow (it casts the whole model); with the scaling vectors frozen it trained
        # off the sphere (bf16 weights 0.0070 off unit norm after 3 AdamW steps at lr 1e-3; renormalized: 0.0017).
        raise NgptConfigError(
            f"{name} is {str(weight.dtype).removeprefix('torch.')} under DeepSpeed, whose bf16/fp16 optimizer updates "
            "fp32 copies of the weights that the renormalization after each optimizer step cannot reach: the nGPT "
            "matrices would leave the hypersphere (paper section 2.6). After deepspeed.initialize, attach ngpt_ds's "
            "renormalization of those copies: `from ngpt_ds.hf.trainer import keep_on_the_sphere; "
            "keep_on_the_sphere(engine)` (with transformers' Trainer: the KeepOnTheSphere callback), or fine-tune in "
            "fp32 or with ngpt_ds's launch/train.py"
        )
    if kind == "FSDP" or type(weight).__name__ in ("DTensor", "FlatParameter"):
        raise NgptConfigError(
            f"{name} is being trained under FSDP, which shards the weights so that the renormalization after each "
            "optimizer step cannot reach them: the nGPT matrices would leave the hypersphere (paper section 2.6). "
            "Fine-tune without FSDP (one device, or DDP), under DeepSpeed with ngpt_ds's KeepOnTheSphere callback "
            "(ngpt_ds.hf.trainer), or with ngpt_ds's launch/train.py"
        )


def _any_sphere_matrix_trains(model: nn.Module) -> bool:
    """Whether any of `model`'s sphere matrices requires grad: under PEFT's LoRA (ngpt_ds.hf.lora) none does, the
    adapted matrices are Norm(W + BA) of frozen ones, so DeepSpeed's or FSDP's copies of what trains hold no sphere
    matrix to keep. A module walk: run only where the embedding, the first matrix checked, is frozen."""
    return any(matrix.param.requires_grad for matrix in sphere_matrices(model))


def _deepspeed_running() -> bool:
    """Whether DeepSpeed's communication is set up in this process (deepspeed.initialize does it), looked up without
    importing DeepSpeed."""
    comm = sys.modules.get("deepspeed.comm")
    return bool(comm is not None and comm.is_initialized())


def _check_scales_train(model: Any) -> None:
    """Refuses to train an nGPT whose scaling vectors are 16-bit (model.to(torch.bfloat16), .half()): stored at
    their `scale`, they lose every optimizer step smaller than half their spacing there, so they would not train
    (from_pretrained with a 16-bit dtype keeps them in float32: _keep_in_fp32_modules_strict). DeepSpeed's 16-bit
    training, which keeps fp32 masters, is let through by _check_renormalized_here's marker first.

    Every scaling vector that trains is checked: the check read s_z alone, so fine-tuning one block of a 16-bit
    model (the rest, s_z included, frozen) went through and its alphas, s_qk, s_u and s_v did not move."""
    if getattr(model, "_ngpt_ds_sphere_hook", None) is not None:
        return
    if cast(DeclaredMatrix, model.model.embed).weight.dtype not in (torch.bfloat16, torch.float16):
        return  # .to() and .half() convert the weights too: no module walk on each forward of a float32 model
    trained = (m.param for m in model.modules() if isinstance(m, ScaleVector) and m.param.requires_grad)
    dtype = next((p.dtype for p in trained if p.dtype in (torch.bfloat16, torch.float16)), None)
    if dtype is not None:
        raise NgptConfigError(
            f"{type(model).__name__}'s scaling vectors (alpha, s_qk, s_u, s_v, s_z) are "
            f"{str(dtype).removeprefix('torch.')}: an optimizer step smaller than half their spacing at their stored "
            f"values ({torch.finfo(dtype).eps / 2:.2g} at 1.0) is lost, so they would not train. Keep them in float32: "
            "load with from_pretrained(..., dtype=torch.bfloat16) rather than converting with .to() or .half(), or "
            "train a float32 model under bf16 autocast (TrainingArguments(bf16=True))"
        )


def _check_gathered(model: Any) -> None:
    """Refuses to save a model whose weights are ZeRO-3 partitions (a model handed back by a DeepSpeed engine at
    ZeRO 3: each rank holds a flat piece; the parameter itself is an empty tensor with ds_shape its real shape).
    transformers' save_pretrained wrote those empty tensors as the weights without a word (a 2-rank job: every
    tensor torch.Size([0])), and the folder failed to load ("size mismatch"), the trained weights lost."""
    empty = [
        (name, p)
        for name, p in model.named_parameters()
        if hasattr(p, "ds_id") and p.numel() != int(torch.Size(getattr(p, "ds_shape", p.shape)).numel())
    ]
    if empty:
        name, param = empty[0]
        raise NgptConfigError(
            f"{type(model).__name__}.save_pretrained: {len(empty)} of its weights ({name} first, "
            f"{list(getattr(param, 'ds_shape', ()))} holding {param.numel()} values on this rank) are DeepSpeed "
            "ZeRO-3 partitions, which would be saved as empty tensors. Save on every rank inside `with "
            "deepspeed.zero.GatheredParameters(list(model.parameters())):` (is_main_process=rank == 0), or with "
            "transformers' trainer.save_model()"
        )
