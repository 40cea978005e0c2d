"""Fault: normalize_matrices_ and max_norm_deviation computed in fp32 whatever the weights' dtype, so a
float64 model (the dtype of every float64 reference comparison) was renormalized only to fp32 rounding:
rows off the unit sphere by ~1e-8, and deviations below ~1e-7 unseen. They now work in float64 for float64
weights, and in fp32 for fp32 and 16-bit weights, as before."""

import torch

from ngpt_ds.model import NGPT, ModelConfig, normalize_matrices_, sphere_matrices
from ngpt_ds.model.sphere import max_norm_deviation


def tiny_model() -> NGPT:
    torch.manual_seed(2)
    return NGPT(ModelConfig(arch="ngpt", vocab_size=53, n_layer=2, n_embd=32, n_head=4, seq_len=32).validate())


def test_float64_matrices_are_renormalized_to_float64_rounding():
    model = tiny_model().double()
    with torch.no_grad():
        for matrix in sphere_matrices(model):
            matrix.param.mul_(1 + 0.1 * torch.rand_like(matrix.param))  # off the sphere
    normalize_matrices_(model)
    for matrix in sphere_matrices(model):
        norms = torch.linalg.vector_norm(matrix.param, dim=matrix.norm_dim)
        assert (norms - 1).abs().max().item() < 1e-14, matrix.name  # fp32 rounding left ~1e-8


def test_max_norm_deviation_of_float64_weights_sees_a_deviation_of_1e_9():
    model = tiny_model().double()
    normalize_matrices_(model)
    assert max_norm_deviation(model) < 1e-14
    with torch.no_grad():
        model.head.weight[7].mul_(1 + 1e-9)
    assert abs(max_norm_deviation(model) - 1e-9) < 1e-13


def test_float32_and_bfloat16_weights_are_renormalized_in_float32_as_before():
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_model().to(dtype)
        with torch.no_grad():
            for matrix in sphere_matrices(model):
                matrix.param.mul_(1.5)
        expected = {
            m.name: m.param.float() / m.param.float().norm(dim=m.norm_dim, keepdim=True) for m in sphere_matrices(model)
        }
        normalize_matrices_(model)
        for matrix in sphere_matrices(model):
            assert matrix.param.dtype == dtype
            torch.testing.assert_close(matrix.param, expected[matrix.name].to(dtype), atol=0, rtol=0)
