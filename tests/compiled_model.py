"""A tiny model's loss and gradients eager and under torch.compile, with the code Inductor generated for it: what
the tests of a compiled model's kernels (tests/test_compile.py, tests/test_speed28_written_attention.py) compare."""

import torch


def eager_and_compiled(arch: str) -> tuple[tuple, tuple, list[str]]:
    """A 2-block model of `arch` (seed 0: vocab 64, width 32, 2 heads, 16 positions) on one random batch of 2
    sequences: ((loss, gradients by parameter name) eager, the same under torch.compile, Inductor's code for the
    compiled graphs, forward and backward)."""
    from torch._inductor.utils import run_and_get_code

    from ngpt_ds.model.config import ModelConfig
    from ngpt_ds.model.factory import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, vocab_size=64, n_layer=2, n_embd=32, n_head=2, seq_len=16))
    tokens = torch.randint(0, 64, (2, 17))

    def loss_and_grads(module):
        model.zero_grad(set_to_none=True)
        _, loss = module(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    eager = loss_and_grads(model)
    compiled, code = run_and_get_code(loss_and_grads, torch.compile(model))
    return eager, compiled, code
