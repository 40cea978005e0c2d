"""Pipeline parallelism: one built CausalLM cut into stages of consecutive layers (README "Pipeline
parallelism").

DeepSpeed's `PipelineModule` runs a list of layers, each a callable tensor -> tensor, spread over P
stages. The layers here are thin views of the model the project already builds, so there is no second
model definition:

  layer 0            EmbeddingLayer  the model's `embed`, run through the model's own `embed_tokens`
  layers 1 .. L      BlockLayer      block i, with the RoPE tables of the model's `rotary`
  layer L + 1        HeadLayer       every remaining child (nGPT: head and s_z; GPT: final_norm and
                                     head), run through the model's own `logits`; its `loss` is the
                                     model's `cross_entropy` (fp32, targets of -1 ignored)

Every rank builds the whole model under the same seed, so the weights are the ones a run without
pipelining starts from whatever P is (PP2 = PP1 = no pipeline, bit for bit), then keeps only its
stage's layers. Blocks are dealt out evenly (`partition_method="type:BlockLayer"`): the embedding joins
the first stage, the head the last.

DeepSpeed checks: ZeRO 0 and 1 only (its pipeline engine asserts against 2 and 3); tensor and sequence
parallelism are refused with it here (`check_pipeline`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ngpt_ds import log
from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.sphere import sphere_matrices

if TYPE_CHECKING:
    from deepspeed.pipe import PipelineModule

    from ngpt_ds.data.loader import ValidationBatches
    from ngpt_ds.model.layers import RotaryEmbedding
    from ngpt_ds.model.lm import CausalLM

_log = log.get(__name__)

_TRUNK = ("embed", "blocks", "rotary")
"""CausalLM children that are not part of the head."""


class EmbeddingLayer(nn.Module):
    """token ids [B, T] -> the first hidden states [B, T, d], by the model's `embed_tokens`."""

    def __init__(self, model: CausalLM):
        super().__init__()
        self.embed = model.embed
        # CausalLM's method, called on this layer (it reads self.embed only): typed loosely for that.
        self._embed_tokens: Callable[..., torch.Tensor] = type(model).embed_tokens

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self._embed_tokens(self, token_ids)


class BlockLayer(nn.Module):
    """One block: h [B, T, d] -> h. RoPE tables are rebuilt per block (they hold no parameters and are
    cheap), as the stages do not share them; activation checkpointing as CausalLM's `checkpoint_every`."""

    def __init__(self, block: nn.Module, rotary: RotaryEmbedding, recompute: bool):
        super().__init__()
        self.block = block
        self._rotary = rotary  # not registered: it has no parameters or buffers
        self.recompute = recompute

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        cos, sin = self._rotary.tables(h.shape[1], h.device, h.dtype)
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(self.block, h, cos, sin, use_reentrant=False)
        return self.block(h, cos, sin)


class HeadLayer(nn.Module):
    """Final hidden states [B, T, d] -> logits [B, T, V], by the model's `logits`; `loss` is its
    `cross_entropy`."""

    def __init__(self, model: CausalLM):
        super().__init__()
        for name, child in model.named_children():
            if name not in _TRUNK:
                self.add_module(name, child)
        # CausalLM's methods, called on this layer (which holds the children they read): typed loosely for that.
        self._logits: Callable[..., torch.Tensor] = type(model).logits
        self._cross_entropy: Callable[..., torch.Tensor] = type(model).cross_entropy

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self._logits(self, h)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._cross_entropy(self, logits, targets)


def pipeline_layers(model: CausalLM) -> list[nn.Module]:
    """The model as a list of layers, in order: embedding, blocks, head."""
    every = model.checkpoint_every
    blocks = [BlockLayer(b, model.rotary, every > 0 and i % every == 0) for i, b in enumerate(model.blocks)]
    return [EmbeddingLayer(model), *blocks, HeadLayer(model)]


def build_pipeline(model: CausalLM, stages: int) -> PipelineModule:
    """This rank's stage of `model` as a DeepSpeed PipelineModule (torch.distributed must be up).

    `sphere_matrix_names`, set on the module, lists the sphere matrices of every stage (in
    PipelineModule's naming, `<layer index>.<path>`), so the hypersphere hook's job-wide checks agree
    on one list on every rank."""
    from deepspeed.pipe import PipelineModule

    layers = pipeline_layers(model)
    with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed prints the partition; logged below instead
        module = PipelineModule(
            layers=layers,
            num_stages=stages,
            loss_fn=layers[-1].loss,
            partition_method="type:BlockLayer",
            activation_checkpoint_interval=0,
        )
    module.sphere_matrix_names = [f"{i}.{m.name}" for i, layer in enumerate(layers) for m in sphere_matrices(layer)]
    module.model_parameter_count = sum(p.numel() for p in model.parameters())
    _log.info(
        f"pipeline: {stages} stages holding layers (0 = embedding, {len(layers) - 1} = head) "
        + ", ".join(f"{module.parts[s]}-{module.parts[s + 1] - 1}" for s in range(stages))
    )
    # PipelineModule keeps the whole list; drop the other stages' layers so their weights are freed.
    for i in range(len(layers)):
        if not module._local_start <= i < module._local_stop:
            module._layer_specs[i] = None
    return module


def model_parameter_name(name: str) -> str:
    """A PipelineModule parameter name (`<layer index>.<path in the layer>`) as the model's own:
    `0.embed.weight` -> `embed.weight`, `2.block.attn.qkv.weight` -> `blocks.1.attn.qkv.weight`,
    `3.s_z.param` -> `s_z.param`. Checkpoints of a pipeline run load into the plain model with it.
    Raises NgptConfigError for a name not so formed: a name without a layer index ('x', 'a.block.y', the
    checkpoint's files altered) stopped generate, evaluate and export with a ValueError traceback."""
    index, dot, path = name.partition(".")
    if not (dot and path and index.isascii() and index.isdecimal()) or (path.startswith("block.") and int(index) < 1):
        raise NgptConfigError(
            f"the pipeline checkpoint names a parameter {name!r}, where DeepSpeed's PipelineModule writes "
            "'<layer index>.<path in the layer>' (blocks from layer 1): its files are damaged or were altered; "
            "use another checkpoint"
        )
    if path.startswith("block."):
        return f"blocks.{int(index) - 1}.{path.removeprefix('block.')}"
    return path


def block_layers(module: nn.Module) -> list[tuple[int, nn.Module]]:
    """(model block index, block) of every block this stage holds."""
    return [(int(name) - 1, layer.block) for name, layer in module.named_children() if isinstance(layer, BlockLayer)]


def head_layer(module: nn.Module) -> HeadLayer | None:
    """The head, on the last stage; None elsewhere."""
    return next((layer for layer in module.children() if isinstance(layer, HeadLayer)), None)


def check_pipeline(
    stages: int,
    *,
    world_size: int,
    zero_stage: int,
    n_layer: int,
    deepspeed_source: str,
    tensor_parallel: int = 1,
    sequence_parallel: int = 1,
    precision: str = "fp32",
) -> None:
    """What pipeline parallelism needs, checked before the process group; every problem is reported."""
    if stages == 1:
        return
    source = "train.pipeline_parallel_size"
    problems: list[str] = []
    if world_size % stages:
        problems.append(
            f"world size {world_size} is not divisible by {source} = {stages}: start a multiple of {stages} processes"
        )
    if n_layer < stages:
        problems.append(f"model.n_layer = {n_layer} is below {source} = {stages}: every stage needs a block")
    if zero_stage not in (0, 1):
        problems.append(
            f"{deepspeed_source} sets zero_optimization.stage {zero_stage}, and DeepSpeed's pipeline engine "
            "runs with ZeRO stage 0 or 1 only (it stops on 2 and 3: 'ZeRO-2 and ZeRO-3 are incompatible with "
            'pipeline parallelism\'): set "zero_optimization": {"stage": 1} in that file (as '
            f"ds_configs/zero1.json does), or set {source} to 1"
        )
    if zero_stage == 0 and precision != "fp32":
        # The pipeline engine then steps through DeepSpeed's BF16_Optimizer, whose checkpoints DeepSpeed
        # 0.19.8 cannot load at ZeRO 0 (bf16_optimizer._load_legacy_checkpoint: KeyError 0).
        problems.append(
            f"{deepspeed_source} sets zero_optimization.stage 0 with {precision}: DeepSpeed cannot resume "
            'the checkpoints of such a pipeline. Set "zero_optimization": {"stage": 1} in that file'
        )
    if tensor_parallel > 1:
        problems.append(
            f"train.tensor_parallel_size = {tensor_parallel} with {source} = {stages} is not supported (the "
            "tensor-parallel layers are not wired to DeepSpeed's pipeline grid): use one of the two"
        )
    if sequence_parallel > 1:
        problems.append(
            f"train.sequence_parallel_size = {sequence_parallel} with {source} = {stages} is not supported "
            "(the pipeline passes whole sequences between stages): use one of the two"
        )
    if problems:
        raise NgptConfigError("pipeline parallelism: " + "; ".join(problems))


class PipelineSteps:
    """How the trainer runs a step and an evaluation on a pipeline engine, where DeepSpeed's schedule
    runs the micro-batches itself (`train_batch`, `eval_batch`) instead of one forward, backward and
    step per micro-batch."""

    def __init__(self, engine: Any):
        self.engine = engine

    def data_parallel(self) -> tuple[int, int]:
        """(rank, size) among the replicas of this stage: what the loader deals data by."""
        grid = self.engine.grid
        return grid.get_data_parallel_rank(), grid.get_data_parallel_world_size()

    def train_batch(self, loader: Any, micro_batches: int) -> torch.Tensor:
        """One optimizer step; the mean loss over its micro-batches and the data-parallel replicas,
        the same on every rank. Every rank draws the step's micro-batches, so every loader holds the
        same global position (DeepSpeed reads them on the first and last stage only)."""
        batches = [loader.next_batch() for _ in range(micro_batches)]
        return self.engine.train_batch(iter(batches)).detach().float()

    def evaluate(self, batches: ValidationBatches) -> float:
        """Mean loss over `batches` and the data-parallel replicas, the same on every rank.

        DeepSpeed's own broadcast of the loss (`bcast_loss`) sends the last stage's 0-dim loss into a buffer of
        shape [1] on the other stages: the same count, which NCCL passes, but the ranks of the group call with
        different shapes (torch's TORCH_DISTRIBUTED_DEBUG=DETAIL check refuses that). The last stage's loss goes
        to the other stages of its pipeline as one all-reduce of shape [1] on every rank instead (zeros elsewhere).
        """
        from ngpt_ds.train.collectives import all_reduce_on

        engine = self.engine
        loss = engine.eval_batch(iter(batches), num_micro_batches=len(batches), bcast_loss=False)
        value = torch.zeros(1, dtype=torch.float32, device=engine.device)
        if engine.is_last_stage():
            value += loss.detach().float().reshape(1).to(engine.device)
        return float(all_reduce_on(value, engine.device, group=engine.grid.get_pipe_parallel_group()).item())
