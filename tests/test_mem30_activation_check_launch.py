"""A long-context run whose activations do not fit the node is refused at startup on every rank (mem30). Needs
builder.py to pass activations_at_least(...) to check_state_fits and to read NGPT_DS_NODE_MEMORY_BYTES in
_node_memory_bytes (the lead's edit). Before it, the run below passed the state-only check (0.03 GiB a rank)."""

from conftest import cpu_env, torchrun

MODEL = "model:\n  arch: ngpt\n  n_layer: 4\n  n_embd: 192\n  n_head: 4\n  seq_len: 2048\ntrain:\n  max_steps: 1\n"


def _job(tmp_path, node_bytes, port_out):
    config = tmp_path / "long.yaml"
    config.write_text(MODEL)
    env = cpu_env(NGPT_DS_NODE_MEMORY_BYTES=str(node_bytes))
    return torchrun(
        "launch/train.py",
        "--config",
        str(config),
        "--deepspeed_config",
        "ds_configs/zero2.json",
        "--out",
        str(tmp_path / port_out),
        "--no-progress",
        "--max-steps",
        "1",
        env=env,
        check=False,
    )


def test_long_context_refused_on_both_ranks_in_one_line(tmp_path):
    done = _job(tmp_path, 2**30, "refused")
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error: model config")]
    assert done.returncode != 0
    assert len(lines) == 2 and lines[0] == lines[1]
    assert (
        "training state 0.03 GiB + activations 0.77 GiB per rank (a lower bound), 1.61 GiB on this node's 2 "
        "rank(s), available 1.00 GiB: it cannot fit" in lines[0]
    )


def test_same_run_at_a_fitting_size_starts(tmp_path):
    done = _job(tmp_path, 2**31, "fits")
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-2000:]
    assert "a training step's peak measured 1.3-2.5 times this lower bound, so it may run out of memory" in text
    assert "step 1: validation loss" in text


def test_a_node_memory_that_is_not_a_byte_count_is_named(monkeypatch):
    """NGPT_DS_NODE_MEMORY_BYTES=16G (or 0) had been int()'s ValueError, a traceback on every rank."""
    import pytest

    from ngpt_ds.errors import NgptConfigError
    from ngpt_ds.train import builder

    for value in ("16G", "0", "-5", "1e9"):
        monkeypatch.setenv("NGPT_DS_NODE_MEMORY_BYTES", value)
        with pytest.raises(NgptConfigError) as err:
            builder._node_memory_bytes(None)
        assert str(err.value) == (
            f"NGPT_DS_NODE_MEMORY_BYTES={value!r} must be the node's memory as a whole number of bytes, e.g. "
            "68719476736 for 64 GiB; or unset it to use the node's own"
        )
    monkeypatch.setenv("NGPT_DS_NODE_MEMORY_BYTES", "1073741824")
    assert builder._node_memory_bytes(None) == 1 << 30
