"""ZeRO 3's module granularity threshold: the value that makes the whole model one leaf module (DeepSpeed
0.19.8 then stops every rank in the first backward) is refused; smaller ones, with the all-reduce fetch and
no persistent parameters, train to plain ZeRO 3's losses on 2 gloo ranks."""

import pytest

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model.config import ModelConfig
from ngpt_ds.model.factory import build_model
from ngpt_ds.train.ds_compat import check_module_granularity

from conftest import read_metrics, tiny_ngpt, tiny_train, train_run, write_ds_config, write_yaml

ROOT_GRANULARITY = 2384
"""tiny_ngpt() at vocab 512: 66752 parameters / 28 modules, as DeepSpeed counts them (its log names the
smallest, CausalSelfAttention at 1032; a 2-rank run at 2384 stopped in the first backward, at 2383 it trained)."""


@pytest.fixture(scope="module")
def tiny_model():
    return build_model(ModelConfig(**tiny_ngpt(), vocab_size=512))


def _zero3(**zero) -> dict:
    return {"zero_optimization": {"stage": 3, **zero}}


@pytest.mark.parametrize("key", ["stage3_module_granularity_threshold", "module_granularity_threshold"])
def test_a_threshold_making_the_whole_model_a_leaf_is_refused_with_the_bound(tiny_model, key):
    """The fault: at ROOT_GRANULARITY or above DeepSpeed made the model itself the ZeRO 3 leaf and the run
    stopped in the first backward ("output with shape [1] doesn't match the broadcast shape [512, 32]")."""
    for threshold in (ROOT_GRANULARITY, 10**6):
        with pytest.raises(NgptConfigError) as err:
            check_module_granularity(tiny_model, _zero3(**{key: threshold}))
        assert str(err.value) == (
            f"DeepSpeed config zero_optimization.{key} = {threshold} makes the whole model one ZeRO 3 leaf module "
            f"(its granularity is {ROOT_GRANULARITY}: 66752 parameters / 28 modules), and DeepSpeed stops the first "
            f"backward with a RuntimeError there; set it below {ROOT_GRANULARITY} (smaller values make the blocks "
            "leaves) or remove it"
        )


def test_thresholds_below_the_model_or_outside_zero3_pass(tiny_model):
    for config in (
        _zero3(stage3_module_granularity_threshold=ROOT_GRANULARITY - 1),
        _zero3(stage3_module_granularity_threshold=0),
        _zero3(),
        {"zero_optimization": {"stage": 2, "stage3_module_granularity_threshold": 10**6}},
        {},
    ):
        assert check_module_granularity(tiny_model, config) is None


def test_leaf_blocks_with_all_reduce_fetch_train_as_plain_zero3(tmp_path, tiny_dataset):
    """stage3_use_all_reduce_for_fetch_params with no persistent parameters and the blocks as leaves
    (threshold 1500): the same losses as plain ZeRO 3 on 2 ranks, and the sphere kept."""
    config = write_yaml(tmp_path / "t.yaml", tiny_ngpt(), tiny_train(3))
    plain = write_ds_config(tmp_path / "z3.json", stage=3, bf16=False, micro=4, accum=1)
    fetch = write_ds_config(tmp_path / "z3f.json", stage=3, bf16=False, micro=4, accum=1)
    fetch.write_text(
        fetch.read_text().replace(
            '"stage": 3}',
            '"stage": 3, "stage3_use_all_reduce_for_fetch_params": true, "stage3_param_persistence_threshold": 0, '
            '"stage3_module_granularity_threshold": 1500}',
        )
    )
    assert "1500" in fetch.read_text()
    for ds, out in ((plain, tmp_path / "plain"), (fetch, tmp_path / "fetch")):
        train_run(config, ds, tiny_dataset, out, nproc=2)
    want, got = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "fetch")
    assert [m["step"] for m in got] == [1, 2, 3]
    assert [m["train/loss"] for m in got] == pytest.approx([m["train/loss"] for m in want], abs=1e-6)
    assert max(m["ngpt/max_norm_deviation"] for m in got) < 1e-6
