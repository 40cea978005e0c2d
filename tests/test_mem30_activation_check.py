"""The startup memory check counts activations (mem30). check_state_fits compared the training state alone with the
node: a long-context run (ngpt_0.5b_8k, or seq_len 16384 on a small model at micro batch 8) passed it and was killed
by the OOM killer at its first step, after minutes of startup. With activations_at_least (estimate_memory's meta-device
count, on a two-block copy scaled to n_layer) the check refuses a run whose lower bound does not fit, in one line with
the figures and the fixes, and warns when the node holds less than twice it."""

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model import ModelConfig
from ngpt_ds.train.memory_plan import (
    activations_at_least,
    check_state_fits,
    estimate_memory,
    parameters_at_least,
    state_bytes_per_parameter,
)

LONG = ModelConfig(arch="ngpt", n_layer=6, n_embd=64, n_head=4, seq_len=16384, vocab_size=512)


@pytest.mark.parametrize("checkpoint_every", [0, 1, 4])
@pytest.mark.parametrize("sequence_parallel", [1, 2])
def test_two_block_count_equals_the_full_estimate(checkpoint_every, sequence_parallel):
    full = estimate_memory(
        LONG,
        micro_batch=8,
        precision="fp32",
        zero_stage=0,
        zero_ranks=2,
        sequence_parallel=sequence_parallel,
        checkpoint_every=checkpoint_every,
    )
    cheap = activations_at_least(
        LONG, micro_batch=8, precision="fp32", sequence_parallel=sequence_parallel, checkpoint_every=checkpoint_every
    )
    assert cheap == full.activations + full.recompute


def test_long_context_is_refused_when_state_alone_fits():
    """Fault: the state-only check passed this run (6.5 MiB of state per rank against 5.4 GiB of activations): refused now."""
    activations = activations_at_least(LONG, micro_batch=8, precision="fp32")
    assert activations == estimate_memory(LONG, micro_batch=8, precision="fp32", zero_stage=0, zero_ranks=2).activations
    state = state_bytes_per_parameter("fp32", 0, 2) * parameters_at_least(LONG)
    need = (state + activations) * 2
    run = dict(world_size=2, local_world_size=2, source="c.yaml", zero_stage=0, precision="fp32")
    assert check_state_fits(LONG, node_bytes=int(need) - 1, **run) is None  # the old check: state only
    with pytest.raises(NgptConfigError) as err:
        check_state_fits(LONG, node_bytes=int(need) - 1, activations=activations, **run)
    gib = 2.0**30
    text = str(err.value)
    assert "\n" not in text
    assert text == (
        f"model config (c.yaml): training state {state / gib:,.2f} GiB + activations {activations / gib:,.2f} GiB "
        f"per rank (a lower bound), {need / gib:,.2f} GiB on this node's 2 rank(s), available "
        f"{(int(need) - 1) / gib:,.2f} GiB: it cannot fit. Use a smaller micro batch with more gradient accumulation, "
        "activation checkpointing (train.checkpoint_every), sequence parallelism (train.sequence_parallel_size), "
        "or ZeRO 3"
    )
    # Exactly at the lower bound: no refusal (never a false one), a warning; twice it: silent (ACTIVATION_HEADROOM).
    warning = check_state_fits(LONG, node_bytes=int(need) + 1, activations=activations, **run)
    assert warning is not None and warning.startswith("warning: model config (c.yaml)") and "\n" not in warning
    assert check_state_fits(LONG, node_bytes=int(need * 1.9), activations=activations, **run) is not None
    assert check_state_fits(LONG, node_bytes=int(need * 2.0) + 1, activations=activations, **run) is None


def test_fixes_named_in_the_refusal_do_fit():
    """Checkpointing every block and sequence parallelism 2 each bring the same run under that node."""
    base = activations_at_least(LONG, micro_batch=8, precision="fp32")
    assert activations_at_least(LONG, micro_batch=8, precision="fp32", checkpoint_every=1) < base // 2
    assert activations_at_least(LONG, micro_batch=4, precision="fp32") < base // 2 + base // 100
    assert activations_at_least(LONG, micro_batch=8, precision="fp32", sequence_parallel=2) < base // 2 + base // 100
