"""Using a trained model without the training cluster: load, export, generate, evaluate.

    loading          `load(path)`: a trainer checkpoint (any ZeRO stage / world size) or an exported folder
    run_checkpoint   `resolve_checkpoint(path)`, the run config and weights of a trainer checkpoint
    export_layout    the file names of an exported folder
    export           `export_model(checkpoint, out)`: safetensors + config.json + tokenizer.model + README
    generate         `generate(...)`, `generate_ids(...)`: temperature / top-k / top-p sampling, KV cache
    evaluate         `evaluate(...)`: validation loss and perplexity at 1x, 2x, 4x the trained context
    lm_eval_adapter  the `ngpt_ds` model for lm-evaluation-harness (imports lm_eval; not imported here)

Nothing here starts DeepSpeed; only checkpoint consolidation imports its zero_to_fp32 utilities.
"""

from ngpt_ds.infer.evaluate import ContextResult, evaluate, format_table
from ngpt_ds.infer.export import export_model
from ngpt_ds.infer.generate import GREEDY, Generation, Sampling, generate, generate_ids
from ngpt_ds.infer.loading import LoadedModel, load, load_checkpoint, load_export
from ngpt_ds.infer.run_checkpoint import resolve_checkpoint

__all__ = [
    "GREEDY",
    "ContextResult",
    "Generation",
    "LoadedModel",
    "Sampling",
    "evaluate",
    "export_model",
    "format_table",
    "generate",
    "generate_ids",
    "load",
    "load_checkpoint",
    "load_export",
    "resolve_checkpoint",
]
