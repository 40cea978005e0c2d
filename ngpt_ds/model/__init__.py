"""nGPT and its GPT baseline. Knows nothing of DeepSpeed or distributed training."""

from ngpt_ds.model.config import ModelConfig, load_model_config, preset_names
from ngpt_ds.model.factory import build_model
from ngpt_ds.model.flops import count_parameters, training_flops_per_token
from ngpt_ds.model.gpt import GPT
from ngpt_ds.model.layers import DeclaredMatrix, MatrixLayout, Projection, ScaleVector, TokenEmbedding, l2_normalize
from ngpt_ds.model.lm import CausalLM
from ngpt_ds.model.ngpt import NGPT
from ngpt_ds.model.sphere import SphereMatrix, max_norm_deviation, normalize_matrices_, sphere_matrices

__all__ = [
    "CausalLM",
    "DeclaredMatrix",
    "GPT",
    "MatrixLayout",
    "ModelConfig",
    "NGPT",
    "Projection",
    "ScaleVector",
    "SphereMatrix",
    "TokenEmbedding",
    "build_model",
    "count_parameters",
    "l2_normalize",
    "load_model_config",
    "max_norm_deviation",
    "normalize_matrices_",
    "preset_names",
    "sphere_matrices",
    "training_flops_per_token",
]
