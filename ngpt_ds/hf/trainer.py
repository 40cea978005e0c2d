"""KeepOnTheSphere: nGPT's renormalization for transformers' Trainer under DeepSpeed.

Without DeepSpeed the HF nGPT renormalizes itself after every optimizer step (ngpt_ds.hf.modeling_ngpt). Under
DeepSpeed the optimizer updates fp32 master copies that the model cannot reach, and its training is refused (its
forward, or at ZeRO 1/2 in fp32 its first optimizer step: ngpt_ds.hf.training_guards); this callback attaches
ngpt_ds's own trainer's renormalization of those masters (ngpt_ds.train.hypersphere, ZeRO 0-3, fp32 and bf16, the
JSON's own optimizer block too) to the Trainer's DeepSpeed engine:

    from ngpt_ds.hf.trainer import KeepOnTheSphere
    trainer = Trainer(model=model, args=TrainingArguments(..., deepspeed="ds.json"), ...)
    trainer.add_callback(KeepOnTheSphere(trainer))
    trainer.train()

An engine made by `deepspeed.initialize` directly gets the same renormalization from keep_on_the_sphere(engine).

This module needs ngpt_ds installed (an export's copy of the modeling code does not carry it).
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.hf.modeling_ngpt import _SPHERE_MODELS, NGPTForCausalLM


class KeepOnTheSphere(TrainerCallback):
    """Renormalizes an nGPT's sphere matrices on DeepSpeed's fp32 masters after every optimizer step of `trainer`
    (ngpt_ds.train.hypersphere.HypersphereHook, as ngpt_ds's trainer does), from the start of training to its end.
    Without DeepSpeed it does nothing: the model renormalizes itself."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.hook: Any = None
        self.model: NGPTForCausalLM | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = self.trainer.model
        if not getattr(self.trainer, "is_deepspeed_enabled", False) or not isinstance(model, NGPTForCausalLM):
            return
        from deepspeed import DeepSpeedEngine

        engine = self.trainer.model_wrapped
        if not isinstance(engine, DeepSpeedEngine) or engine.module is not model:
            raise NgptConfigError(
                f"KeepOnTheSphere: the Trainer's wrapped model is {type(engine).__name__}, not the DeepSpeed engine "
                "of its model; add the callback to the Trainer that trains the nGPT"
            )
        self.hook = keep_on_the_sphere(engine)
        self.model = model

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.hook is None or self.model is None:
            return
        release(self.model)
        self.hook = self.model = None


def keep_on_the_sphere(engine: Any) -> Any:
    """Attaches to `engine` (a DeepSpeedEngine of an NGPTForCausalLM, from deepspeed.initialize or a Trainer) the
    renormalization of its sphere matrices on DeepSpeed's fp32 masters after every optimizer step
    (ngpt_ds.train.hypersphere.HypersphereHook, ZeRO 0-3, fp32 and bf16), and marks the model so that its training
    forward runs. Returns the hook (its max_deviation() measures the masters); release(model) removes it.

    A sphere matrix frozen when it attaches (requires_grad=False, e.g. the embedding of a fine-tune) is left as it is:
    no optimizer moves it (DeepSpeed keeps no fp32 master of it). After changing requires_grad, call the hook's
    rebuild(), then normalize_now(keep_within=4e-6). engine.offload_states() / reload_states() are followed: the next
    step renormalizes the reloaded masters (a step while they are offloaded is refused).

        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=ds)
        keep_on_the_sphere(engine)
    """
    from deepspeed import DeepSpeedEngine

    from ngpt_ds.train.hypersphere import HypersphereHook

    model = getattr(engine, "module", None)
    if not isinstance(engine, DeepSpeedEngine) or not isinstance(model, NGPTForCausalLM):
        raise NgptConfigError(
            f"keep_on_the_sphere takes the DeepSpeed engine of an NGPTForCausalLM (what deepspeed.initialize returns "
            f"first), not a {type(engine).__name__}{'' if model is None else f' of a {type(model).__name__}'}"
        )
    if getattr(model, "_ngpt_ds_sphere_hook", None) is not None:
        return model._ngpt_ds_sphere_hook
    hook = HypersphereHook(engine)
    # Weights loaded on the sphere (a fresh start, a resumed checkpoint) are kept bit for bit, as ngpt_ds's
    # trainer keeps them after a load.
    hook.normalize_now(keep_within=4e-6)
    _SPHERE_MODELS.discard(model)  # at ZeRO 0 in fp32 the plain hook would renormalize them a second time
    setattr(model, "_ngpt_ds_sphere_hook", hook)  # noqa: B010  # read by the forward (_check_renormalized_here)
    return hook


def release(model: NGPTForCausalLM) -> None:
    """Removes keep_on_the_sphere's hook from `model`'s engine; the model renormalizes itself again after every step
    of a torch optimizer holding its weights."""
    hook = getattr(model, "_ngpt_ds_sphere_hook", None)
    if hook is None:
        return
    hook.remove()
    setattr(model, "_ngpt_ds_sphere_hook", None)  # noqa: B010
    _SPHERE_MODELS.add(model)
