"""Fault (session 32, 2fff684, memory_plan.check_state_fits): the available-memory warning returns before the activation
refusal, so wherever MemAvailable is known (every Linux node) a run whose lower bound exceeds the node's whole
memory gets a warning and starts (the OOM killer ends it at its first step): the mem30 refusal is dead code outside
tests that impose NGPT_DS_NODE_MEMORY_BYTES below the machine's real available memory."""

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model import ModelConfig
from ngpt_ds.train.memory_plan import (
    activations_at_least,
    check_state_fits,
    parameters_at_least,
    state_bytes_per_parameter,
)

LONG = ModelConfig(arch="ngpt", n_layer=6, n_embd=64, n_head=4, seq_len=16384, vocab_size=512)


def test_a_run_that_cannot_fit_is_refused_when_the_available_memory_is_known():
    activations = activations_at_least(LONG, micro_batch=8, precision="fp32")
    need = (state_bytes_per_parameter("fp32", 0, 2) * parameters_at_least(LONG) + activations) * 2
    node = int(need) - 1
    run = dict(world_size=2, local_world_size=2, source="c.yaml", zero_stage=0, precision="fp32")
    with pytest.raises(NgptConfigError, match=r"it cannot fit\. Use a smaller micro batch"):
        # MemAvailable is at most MemTotal: a real node reports available <= node_bytes
        check_state_fits(LONG, node_bytes=node, activations=activations, available=node - (1 << 20), **run)
