"""Model config validation, presets, parameter counts, FLOPs formula, and the GPT baseline's structure."""

import math
import sys

import pytest
import torch

from ngpt_ds.errors import NgptConfigError
from ngpt_ds.model import (
    GPT,
    ModelConfig,
    build_model,
    count_parameters,
    load_model_config,
    preset_names,
    sphere_matrices,
    training_flops_per_token,
)
from ngpt_ds.model.config import PRESET_DIR, resolve_config_path

from conftest import REPO, run, tiny_ngpt, tiny_train, write_ds_config, write_yaml


def test_every_problem_is_reported_at_once():
    with pytest.raises(NgptConfigError) as err:
        ModelConfig.from_dict(
            {"n_embd": 100, "n_head": 3, "n_layer": 0, "seq_len": -5, "arch": "bert", "s_z_scale": 0.0},
            source="my.yaml",
        )
    text = str(err.value)
    assert text.startswith("my.yaml: 5 problems")
    for needle in (
        "model.arch = 'bert'",
        "model.n_layer = 0",
        "model.seq_len = -5",
        "model.n_embd = 100: must be divisible by n_head = 3",
        "model.s_z_scale = 0.0",
    ):
        assert needle in text, needle


def test_more_layers_than_the_largest_supported_are_refused_by_validate():
    """Fault (review): n_layer had no upper bound, and every loader (export, checkpoint, transformers) describes
    the model on the meta device block by block before reading a weight, ~20 ms and 40 KB a block, so a
    config saying "n_layer": 1000000000 grew memory until the OOM killer. 1024 blocks still validate."""
    from ngpt_ds.model.config import MAX_N_LAYER

    assert MAX_N_LAYER == 1024
    assert ModelConfig(n_layer=1024, n_embd=32, n_head=2).validate().n_layer == 1024
    for n_layer in (1025, 10**9):
        with pytest.raises(NgptConfigError) as err:
            ModelConfig.from_dict({"n_layer": n_layer, "n_embd": 32, "n_head": 2}, source="my.yaml")
        assert str(err.value) == (
            f"my.yaml: 1 problem\n  - model.n_layer = {n_layer}: is above the largest supported, 1024 (8 times the "
            "deepest published models); a file saying more was altered or was not written by ngpt_ds"
        )


def test_odd_head_dim_is_rejected_for_rope():
    with pytest.raises(NgptConfigError, match=r"head_dim = 5, which is odd"):
        ModelConfig(n_embd=20, n_head=4).validate()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"s_qk_scale": 1e-300}, "model.s_qk_scale = 1e-300: is below float32's smallest normal number"),
        ({"s_z_scale": 1e300}, "model.s_z_scale = 1e+300: is beyond float32's range"),
        ({"rope_base": 1e300}, "model.rope_base = 1e+300: is beyond float32's range"),
        ({"s_z_init": 1e30, "s_z_scale": 1e-10}, "model.s_z_init = 1e+30: divided by s_z_scale = 1e-10"),
        ({"alpha_mlp_init": float("nan")}, "model.alpha_mlp_init = nan: must be a finite number"),
        ({"n_layer": "4"}, "model.n_layer = '4': must be an integer"),
        # Whole numbers in float fields (review: rope_base 10**39 trained, 10**400 stopped build_model after the
        # process group existed; n_embd 2 * 10**400 was an OverflowError in validate).
        ({"rope_base": 10**39}, f"model.rope_base = {10**39}: is beyond float32's range"),
        ({"rope_base": 10**400}, "model.rope_base = 100000000000000000...0000000000000000000: is beyond float32's"),
        ({"s_z_scale": 10**400}, "model.s_z_scale = 100000000000000000...0000000000000000000: is beyond float32's"),
        ({"n_embd": 2 * 10**400}, "model.n_embd = 200000000000000000...0000000000000000000: is above the largest"),
    ],
)
def test_constants_beyond_float32_and_wrong_types_are_named_by_validate(overrides, message):
    """Fault: validate() (what build_model and an HF config.json call) checked neither types nor float32 range:
    s_qk_scale 1e-300 and s_z_init 1e30 / s_z_scale 1e-10 built models with NaN logits, s_z_scale 1e300 a
    RuntimeError traceback ('value cannot be converted to type float without overflow'), rope_base 1e300 left
    all but one pair of each head unrotated, NaN inits went through, n_layer '4' was a TypeError traceback."""
    config = ModelConfig(arch="ngpt", vocab_size=61, n_layer=1, n_embd=32, n_head=4, seq_len=16)
    for name, value in overrides.items():
        setattr(config, name, value)
    with pytest.raises(NgptConfigError) as err:
        build_model(config)
    assert str(err.value).startswith("model config: 1 problem")
    assert message in str(err.value)


def test_unknown_yaml_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  n_layers: 4\n  n_embd: 64\n")
    with pytest.raises(NgptConfigError, match=r"model.n_layers = 4: unknown field; did you mean 'n_layer'"):
        load_model_config(str(path))


def test_duplicate_yaml_key_and_missing_file_are_named(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("model:\n  n_embd: 64\n  n_embd: 128\n")
    with pytest.raises(NgptConfigError, match=r"key 'n_embd' appears twice \(line 3\)"):
        load_model_config(str(path))
    with pytest.raises(NgptConfigError, match=r"does not exist"):
        load_model_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(NgptConfigError, match=r"unknown preset 'ngpt_huge'.*ngpt_tiny"):
        load_model_config("ngpt_huge")


def test_a_misspelt_preset_gets_the_closest_name_and_a_folder_is_named_as_one(tmp_path):
    """Faults: `--config ngpt_tnyi` listed the presets without saying which was meant; `--config runs/`
    (a folder) said "config file runs does not exist"."""
    with pytest.raises(NgptConfigError, match=r"unknown preset 'ngpt_tnyi' \(did you mean 'ngpt_tiny'\?\)"):
        load_model_config("ngpt_tnyi")
    with pytest.raises(NgptConfigError, match=r"unknown preset 'zzz'\. Presets"):
        load_model_config("zzz")  # nothing close: no guess
    with pytest.raises(NgptConfigError, match=rf"config {tmp_path} is a folder, not a YAML file"):
        load_model_config(str(tmp_path))


def test_presets_exist_for_both_archs():
    names = set(preset_names())
    for size in ("tiny", "0.5b", "1b"):
        for arch in ("ngpt", "gpt"):
            assert f"{arch}_{size}" in names
            assert load_model_config(f"{arch}_{size}").arch == arch


@pytest.mark.parametrize(
    "preset, paper_millions",
    [("gpt_0.5b", 468.2), ("ngpt_0.5b", 468.4), ("ngpt_0.5b_8k", 468.4), ("gpt_1b", 1025.7), ("ngpt_1b", 1026.1)],
)
def test_paper_sizes_match_table_2(preset, paper_millions):
    config = load_model_config(preset, {"vocab_size": 32000})  # LLaMA-2 tokenizer, as the paper
    with torch.device("meta"):
        model = build_model(config)
    total = count_parameters(model).total
    # The paper's Table 2 truncates to 0.1M.
    assert math.floor(total / 1e5) / 10 == pytest.approx(paper_millions)


def test_flops_formula_by_hand():
    config = ModelConfig(vocab_size=1000, n_layer=2, n_embd=64, n_head=4, seq_len=32).validate()
    d, hidden = 64, 256
    per_layer_params = 4 * d * d + 3 * d * hidden
    expected = 6 * (2 * per_layer_params + 1000 * d) + 12 * 2 * d * 32
    assert training_flops_per_token(config) == expected
    model = build_model(config)
    counts = count_parameters(model)
    # The matmul parameters of the formula are all matrices except the input lookup table.
    assert counts.matrices - counts.input_embedding == 2 * per_layer_params + 1000 * d


def test_gpt_baseline_structure_and_init():
    torch.manual_seed(0)
    config = ModelConfig(arch="gpt", vocab_size=500, n_layer=3, n_embd=128, n_head=4, seq_len=16).validate()
    model = build_model(config)
    assert isinstance(model, GPT)
    assert sphere_matrices(model) == []  # never renormalized
    assert model.blocks[0].attn.softmax_scale == pytest.approx(1 / math.sqrt(32))
    assert not hasattr(model.blocks[0].attn, "s_qk")
    assert model.head.weight is not model.embed.weight  # untied

    def std(t):
        return t.detach().std().item()

    assert std(model.embed.weight) == pytest.approx(0.02, rel=0.05)
    assert std(model.blocks[0].attn.qkv.weight) == pytest.approx(0.02, rel=0.05)
    assert std(model.blocks[0].mlp.down.weight) == pytest.approx(0.02 / math.sqrt(6), rel=0.05)
    assert std(model.blocks[0].attn.out.weight) == pytest.approx(0.02 / math.sqrt(6), rel=0.05)
    # Pre-norm: the residual stream is not normalized (a clean residual path).
    h = torch.randn(2, 16, 128) * 3
    cos, sin = model.rotary.tables(16, h.device, h.dtype)
    with torch.no_grad():
        for p in model.blocks[0].attn.out.parameters():
            p.zero_()
    torch.testing.assert_close(model.blocks[0].attention_update(h, cos, sin), h)
    # Final RMSNorm before the head.
    x = torch.randn(2, 16, 128) * 5
    expected = torch.nn.functional.linear(x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt(), model.head.weight)
    torch.testing.assert_close(model.logits(x), expected, atol=1e-5, rtol=1e-5)


def test_ngpt_and_gpt_share_layers_not_copies():
    ngpt = build_model(ModelConfig(arch="ngpt", vocab_size=50, n_layer=1, n_embd=32, n_head=2, seq_len=8))
    gpt = build_model(ModelConfig(arch="gpt", vocab_size=50, n_layer=1, n_embd=32, n_head=2, seq_len=8))
    assert type(ngpt.blocks[0].attn) is type(gpt.blocks[0].attn)
    assert type(ngpt.blocks[0].mlp) is type(gpt.blocks[0].mlp)
    assert type(ngpt.rotary) is type(gpt.rotary)


def test_yaml_merge_keys_are_read_as_yaml_does_and_their_keys_may_be_overridden(tmp_path):
    """Fault: a YAML merge key (`<<: *defaults`, valid YAML that every reader merges) was refused as 'not valid
    YAML: could not determine a constructor for the tag merge', because the duplicate-key check constructed
    the `<<` key itself."""
    path = tmp_path / "merged.yaml"
    path.write_text(
        "model: &shape {arch: ngpt, n_layer: 2, n_embd: 32, n_head: 2, seq_len: 32}\n"
        "train:\n  <<: [{max_steps: 7, lr: 0.01}, {max_steps: 9, seed: 5}]\n  lr: 0.02\n"
    )
    from ngpt_ds.train.config import load_model_and_train

    model, train, _ = load_model_and_train(str(path))
    assert (model.n_layer, model.n_embd, train.max_steps, train.lr, train.seed) == (2, 32, 7, 0.02, 5)
    path.write_text("model: {n_embd: 64}\ntrain:\n  <<: {lr: 0.01}\n  lr: 0.02\n  lr: 0.03\n")
    with pytest.raises(NgptConfigError, match=r"key 'lr' appears twice \(line 5\)"):
        load_model_and_train(str(path))
    path.write_text("model: {n_embd: 64}\ntrain:\n  <<: {on: 1}\n")
    with pytest.raises(NgptConfigError, match=r"key True \(line 3\) is not a name"):
        load_model_and_train(str(path))


def test_an_empty_config_file_and_sections_that_are_no_mapping_are_named(tmp_path):
    """Faults: an empty --config file (or one of comments only) trained every field's default model
    without a word; `model: 5` or `train: [1, 2]` stopped in a TypeError traceback (dict() of it)."""
    from ngpt_ds.train.config import load_model_and_train

    path = tmp_path / "c.yaml"
    for text in ("", "# lr sweep\n"):
        path.write_text(text)
        with pytest.raises(
            NgptConfigError, match=rf"^{path}: holds no settings \(the file is empty or only comments\)"
        ):
            load_model_and_train(str(path))
    for text, message in (
        ("model: 5\n", "the model: section must be a mapping of field: value lines, got int 5"),
        (
            "model: {n_embd: 64}\ntrain: [1, 2]\n",
            "the train: section must be a mapping of field: value lines, got list [1, 2]",
        ),
    ):
        path.write_text(text)
        with pytest.raises(NgptConfigError) as err:
            load_model_and_train(str(path))
        assert str(err.value) == f"{path}: {message}"
    path.write_text("model: [n_embd, 64]\n")
    with pytest.raises(NgptConfigError, match=r"the model: section must be a mapping"):
        load_model_config(str(path))  # generate and evaluate read the model section alone


def test_a_section_that_is_a_list_nested_by_yaml_aliases_is_named_abridged(tmp_path):
    """Fault: a section that is no mapping was shown as repr(value)[:200], which builds the whole repr before
    cutting it: YAML aliases nest 9^9 items in a 459-byte file (`model: [&a1 [x, ...], *a1, ...]`), and the
    startup (or the dry run, generate, evaluate) spent minutes and gigabytes before its one-line error. The
    value is now abridged as it is built (ngpt_ds.errors.abridged): only its first items are visited."""
    from ngpt_ds.model.config import section

    visited = []

    class Item:
        def __repr__(self) -> str:
            visited.append(self)
            return "item"

    with pytest.raises(NgptConfigError) as err:
        section({"model": [Item() for _ in range(10_000)]}, "model", tmp_path / "c.yaml")
    assert len(visited) == 8  # errors._ABRIDGED.maxlist (old code: all 10000)
    assert str(err.value) == (
        f"{tmp_path / 'c.yaml'}: the model: section must be a mapping of field: value lines, got list "
        "[item, item, item, item, item, item, item, item, ...]"
    )
    # The same through the YAML reader: three levels of aliases, 729 items.
    path = tmp_path / "aliases.yaml"
    nested = "[x, x, x, x, x, x, x, x, x]"
    for level in (1, 2):
        nested = f"[&a{level} {nested}, " + ", ".join([f"*a{level}"] * 8) + "]"
    path.write_text(f"model: {nested}\n")
    with pytest.raises(NgptConfigError) as err:
        load_model_config(str(path))
    assert str(err.value) == (
        f"{path}: the model: section must be a mapping of field: value lines, got list "
        "[[[...], [...], [...], [...], [...], [...], [...], [...], ...], [[...], [...], [...], [...], [...], [...], "
        "[...], [...], ...], [[...], [...], [...], [...], [...], [...], [...], [...], ...], [[...], [...], [...], "
        "[...], [...], [...], [...], [...], ...], [[...], [...], [...], [...], [...], [...], [...], [...], ...], "
        "[[...], [...], [...], [...], [...], [...], [...], [...], ...], [[...], [...], [...], [...], [...], [...], "
        "[...], [...], ...], [[...], [...], [...], [...], [...], [...], [...], [...], ...], ...]"
    )


def test_a_model_whose_training_state_cannot_fit_the_node_is_refused_at_startup(tmp_path, tiny_dataset):
    """Fault: a typo such as n_embd 1048576 started the run, which ended in "DefaultCPUAllocator: can't allocate
    memory: you tried to allocate 13194139533312 bytes" in a traceback inside the model's construction (and
    n_layer 1000000 spent minutes building blocks first). Its training state alone, at 16 bytes a parameter,
    cannot fit any node: refused before anything is built, naming the sizes."""
    from ngpt_ds.train.config import load_model_and_train
    from ngpt_ds.train.memory_plan import check_state_fits

    config = write_yaml(tmp_path / "huge.yaml", {**tiny_ngpt(), "n_embd": 1048576}, tiny_train(2))
    ds = write_ds_config(tmp_path / "z0.json", stage=0, bf16=False, micro=4, accum=1)
    argv = ["--config", config, "--deepspeed_config", ds, "--data", tiny_dataset, "--out", tmp_path / "out"]
    proc = run([sys.executable, REPO / "launch/train.py", *argv, "--no-progress"], check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (
        f"error: model config ({config}): n_layer 2, n_embd 1048576, mlp width 4194304 and vocabulary 512 make at "
        "least 35,185.4B parameters; training them takes 16 bytes each" in proc.stderr
    ), proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()
    # The shipped 1B preset fits a 24 GiB machine alone (its state: about 15 GiB), and any preset a job of 8 ranks.
    model, _, path = load_model_and_train("ngpt_1b")
    model.vocab_size = 32000
    check_state_fits(model, world_size=1, local_world_size=1, node_bytes=24 * 2**30, source=str(path))
    with pytest.raises(
        NgptConfigError, match=r"at least 15 GiB on this node's 1 rank\(s\) of 1, but the node has 8 GiB"
    ):
        check_state_fits(model, world_size=1, local_world_size=1, node_bytes=8 * 2**30, source=str(path))


@pytest.mark.parametrize(
    "field", ["alpha_attn_init", "alpha_mlp_init", "s_qk_init", "s_u_init", "s_v_init", "s_z_init"]
)
def test_a_zero_init_of_a_scaling_vector_is_refused_for_ngpt(field):
    """Fault (model audit): `s_qk_init: 0` was accepted; the forward multiplies the stored vector by init / scale,
    so the vector's effective value is 0 at every step and its gradient is 0: it never learns (for s_z, every
    logit is 0 for the whole run). The GPT baseline has no scaling vectors: its copy of the field is unused."""
    shape = {"vocab_size": 64, "n_layer": 1, "n_embd": 32, "n_head": 2, "seq_len": 16}
    with pytest.raises(NgptConfigError, match=rf"model\.{field} = 0\.0: must not be 0: .* never learns"):
        ModelConfig(arch="ngpt", **shape, **{field: 0.0}).validate()
    ModelConfig(arch="gpt", **shape, **{field: 0.0}).validate()


def test_a_preset_name_is_the_preset_where_a_folder_of_that_name_is_in_the_working_folder(tmp_path, monkeypatch):
    """Fault: `--config ngpt_tiny` from a folder that holds a folder `ngpt_tiny` (an --out or an export named after
    the preset) was refused: 'config ngpt_tiny is a folder, not a YAML file: give a file such as
    ngpt_tiny/model.yaml or one of the presets: ..., ngpt_tiny, ...' (before fcdedf8: 'config file ngpt_tiny does
    not exist'). A folder is never a config: a bare preset name is the preset; a path to a folder is still refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ngpt_tiny").mkdir()
    assert resolve_config_path("ngpt_tiny") == PRESET_DIR / "ngpt_tiny.yaml"
    assert load_model_config("ngpt_tiny") == load_model_config(str(PRESET_DIR / "ngpt_tiny.yaml"))
    with pytest.raises(NgptConfigError, match=r"config ngpt_tiny is a folder, not a YAML file"):
        resolve_config_path("./ngpt_tiny/")


@pytest.mark.parametrize(
    "field, largest, why",
    [
        ("n_embd", 2**20, "64 times the widest published language models (Llama 3 405B: 16384)"),
        ("n_head", 2**19, "half the largest n_embd: head_dim = n_embd / n_head is even"),
        ("mlp_hidden", 2**22, "4 times the largest n_embd, its default"),
        ("seq_len", 2**24, "16M tokens of context"),
        ("vocab_size", 2**32, "what the dataset's uint32 token ids hold"),
    ],
)
def test_sizes_above_the_largest_supported_are_refused_by_validate(field, largest, why):
    """Fault (review): the size fields had no upper bound: n_embd 2 * 10**400 stopped validate in an OverflowError
    (1/sqrt(n_embd)), and any width, context or vocabulary reached the loaders, which build the model from it."""
    with pytest.raises(NgptConfigError) as err:
        ModelConfig.from_dict({"n_embd": 32, "n_head": 2, field: largest + 1}, source="my.yaml")
    assert str(err.value) == (
        f"my.yaml: 1 problem\n  - model.{field} = {largest + 1}: is above the largest supported, {largest} ({why}); "
        "a file saying more was altered or was not written by ngpt_ds"
    )
    widest = {"n_embd": 2**20, "n_head": 2**19}  # the largest of each: head_dim 2
    assert ModelConfig(**{**widest, field: largest}).validate()
