"""KeepOnTheSphere: nGPT's renormalization for transformers' Trainer under DeepSpeed.

Without DeepSpeed the HF nGPT renormalizes itself after every optimizer step (ngpt_ds.hf.modeling_ngpt). Under
DeepSpeed the optimizer updates fp32 master copies that the model cannot reach, and its forward refuses to train;
this callback attaches ngpt_ds's own trainer's renormalization of those masters (ngpt_ds.train.hypersphere, ZeRO
0-3, fp32 and bf16) to the Trainer's DeepSpeed engine:

    from ngpt_ds.hf.trainer import KeepOnTheSphere
    trainer = Trainer(model=model, args=TrainingArguments(..., deepspeed="ds.json"), ...)
    trainer.add_callback(KeepOnTheSphere(trainer))
    trainer.train()

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

        from ngpt_ds.train.hypersphere import HypersphereHook

        engine = self.trainer.model_wrapped
        if not isinstance(engine, DeepSpeedEngine) or engine.module is not model:
            raise NgptConfigError(
                f"KeepOnTheSphere: the Trainer's wrapped model is {type(engine).__name__}, not the DeepSpeed engine "
                "of its model; add the callback to the Trainer that trains the nGPT"
            )
        self.hook = HypersphereHook(engine)
        # Weights loaded on the sphere (a fresh start, a resumed checkpoint) are kept bit for bit, as ngpt_ds's
        # trainer keeps them after a load.
        self.hook.normalize_now(keep_within=4e-6)
        _SPHERE_MODELS.discard(model)  # at ZeRO 0 in fp32 the plain hook would renormalize them a second time
        setattr(model, "_ngpt_ds_sphere_hook", self.hook)  # noqa: B010  # read by the forward (_check_renormalized_here)
        self.model = model

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.hook is None or self.model is None:
            return
        self.hook.remove()
        setattr(self.model, "_ngpt_ds_sphere_hook", None)  # noqa: B010
        _SPHERE_MODELS.add(self.model)
        self.hook = self.model = None
