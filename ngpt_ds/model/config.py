"""Typed model configuration, validated once, and the YAML presets shipped with the package."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ngpt_ds import yaml_safe
from ngpt_ds.config_files import (  # noqa: F401 - also imported from here
    MAX_CONFIG_FILE_BYTES,
    broken_link,
    read_config_text,
    special_file,
    unparsable,
    unreadable,
)
from ngpt_ds.errors import UNPARSABLE, NgptConfigError, Problems, abridged

PRESET_DIR = Path(__file__).with_name("presets")
ARCHS = ("ngpt", "gpt")
MERGE_TAG = "tag:yaml.org,2002:merge"
"""The tag of a YAML merge key (`<<: *defaults`)."""
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38
"""float32's largest and smallest normal numbers: the model's parameters and constants are float32."""
MAX_N_LAYER = 1024
"""The most transformer blocks a config may describe: about 8 times the deepest published language models
(Llama 3 405B: 126 blocks). Every loader describes the model on the meta device block by block before it
reads a weight (about 20 ms and 40 KB each), so an edited config.json or config.yaml saying 10^9 layers
grew memory until the OOM killer stopped the process."""
MAX_SIZES = {
    "n_embd": (2**20, "64 times the widest published language models (Llama 3 405B: 16384)"),
    "n_head": (2**19, "half the largest n_embd: head_dim = n_embd / n_head is even"),
    "mlp_hidden": (2**22, "4 times the largest n_embd, its default"),
    "seq_len": (2**24, "16M tokens of context"),
    "vocab_size": (2**32, "what the dataset's uint32 token ids hold"),
}
"""The largest value of each size field besides n_layer: far beyond any model, while a width or context of
10^400 (a whole number, which the float range check let through) stopped validate in an OverflowError and a
vocab_size of 10^12 asked the loaders for an embedding of terabytes."""
SCALINGS = (
    ("alpha_attn_init", "alpha_attn_scale"),
    ("alpha_mlp_init", "alpha_mlp_scale"),
    ("s_qk_init", "s_qk_scale"),
    ("s_u_init", "s_uv_scale"),
    ("s_v_init", "s_uv_scale"),
    ("s_z_init", "s_z_scale"),
)
"""(init, scale) of each nGPT scaling vector: stored value `scale`, forward multiplier `init / scale`."""


@dataclass(kw_only=True)
class ModelConfig:
    """Architecture of an nGPT or GPT language model.

    Scaling-vector constants follow the paper (PAPER §2.5, Table 1; docs/ngpt_notes.md). A
    `*_scale` of None means 1/sqrt(n_embd), the paper's default.
    """

    arch: str = "ngpt"
    """'ngpt' (normalized transformer) or 'gpt' (pre-norm RMSNorm baseline)."""
    vocab_size: int | None = None
    """Token vocabulary size. None: taken from the prepared dataset's tokenizer."""
    n_layer: int = 4
    """Number of transformer blocks L."""
    n_embd: int = 256
    """Model width d (d_model)."""
    n_head: int = 4
    """Attention heads H; head_dim = n_embd / n_head must be even (RoPE rotates pairs)."""
    seq_len: int = 256
    """Context length the model is trained at (tokens per sequence)."""
    mlp_hidden: int | None = None
    """Width of each SwiGLU branch (u and v). None: 4 * n_embd, as the paper and official code."""
    rope_base: float = 10000.0
    """RoPE base theta (PAPER A.5: 10000)."""

    # nGPT scaling vectors: effective value = stored * init / scale (PAPER §2.5).
    alpha_attn_init: float = 0.05
    """alpha_A,init: eigen learning rate of the attention update (eq. 10)."""
    alpha_attn_scale: float | None = None
    """alpha_A,scale; None: 1/sqrt(n_embd)."""
    alpha_mlp_init: float = 0.05
    """alpha_M,init: eigen learning rate of the MLP update (eq. 11)."""
    alpha_mlp_scale: float | None = None
    """alpha_M,scale; None: 1/sqrt(n_embd)."""
    s_qk_init: float = 1.0
    """s_qk,init: per-head-dim scale of normalized q and k (eqs. 15-16)."""
    s_qk_scale: float | None = None
    """s_qk,scale; None: 1/sqrt(n_embd) (d_model, not head_dim)."""
    s_u_init: float = 1.0
    """s_u,init (eq. 20)."""
    s_v_init: float = 1.0
    """s_v,init (eq. 21); v is additionally multiplied by sqrt(n_embd)."""
    s_uv_scale: float = 1.0
    """s_u,scale = s_v,scale."""
    s_z_init: float = 1.0
    """s_z,init: per-token logit scale (eq. 24)."""
    s_z_scale: float | None = None
    """s_z,scale; None: 1/sqrt(n_embd)."""

    # GPT baseline.
    init_std: float = 0.02
    """GPT: std of the normal init; output projections use init_std / sqrt(2 n_layer)."""
    norm_eps: float = 1e-6
    """GPT: RMSNorm epsilon."""

    @property
    def is_ngpt(self) -> bool:
        """nGPT (unit-norm matrices kept on the hypersphere, learned scalings) rather than the GPT baseline."""
        return self.arch == "ngpt"

    @property
    def display_name(self) -> str:
        """'nGPT' or 'GPT', for messages."""
        return "nGPT" if self.is_ngpt else "GPT"

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return self.mlp_hidden if self.mlp_hidden is not None else 4 * self.n_embd

    def resolved_scale(self, value: float | None) -> float:
        return 1.0 / math.sqrt(self.n_embd) if value is None else float(value)

    def validate(self, source: str = "model config") -> ModelConfig:
        """Check every field; raise one NgptConfigError listing all problems."""
        p = Problems(source)
        # Also here, not only in from_dict: an HF export's config.json reaches the model through this alone, and
        # its "rope_base": "abc" was a TypeError traceback below, its "alpha_attn_init": NaN a model of NaNs.
        p.wrong_types("model", self)
        p.raise_if_any()  # the range checks below compare numbers with numbers
        p.check(self.arch in ARCHS, "model.arch", self.arch, f"must be one of {', '.join(ARCHS)}")
        for name in ("n_layer", "n_embd", "n_head", "seq_len"):
            value = getattr(self, name)
            p.check(isinstance(value, int) and value > 0, f"model.{name}", value, "must be a positive integer")
        p.check(
            not isinstance(self.n_layer, int) or self.n_layer <= MAX_N_LAYER,
            "model.n_layer",
            self.n_layer,
            f"is above the largest supported, {MAX_N_LAYER} (8 times the deepest published "
            "models); a file saying more was altered or was not written by ngpt_ds",
        )
        for name, (largest, why) in MAX_SIZES.items():
            value = getattr(self, name)
            p.check(
                not isinstance(value, int) or value <= largest,
                f"model.{name}",
                value,
                f"is above the largest supported, {largest} ({why}); a file saying more was altered or was not "
                "written by ngpt_ds",
            )
        p.check(
            self.vocab_size is None or (isinstance(self.vocab_size, int) and self.vocab_size > 0),
            "model.vocab_size",
            self.vocab_size,
            "must be a positive integer, or null to take it from the dataset's tokenizer",
        )
        p.check(
            self.mlp_hidden is None or (isinstance(self.mlp_hidden, int) and self.mlp_hidden > 0),
            "model.mlp_hidden",
            self.mlp_hidden,
            "must be a positive integer or null (4 * n_embd)",
        )
        if all(
            isinstance(getattr(self, n), int) and 0 < getattr(self, n) <= MAX_SIZES[n][0] for n in ("n_embd", "n_head")
        ):
            if self.n_embd % self.n_head:
                p.add(
                    "model.n_embd",
                    self.n_embd,
                    f"must be divisible by n_head = {self.n_head} (head_dim = n_embd / n_head)",
                )
            elif self.head_dim % 2:
                p.add(
                    "model.n_head",
                    self.n_head,
                    f"gives head_dim = {self.head_dim}, which is odd; RoPE needs an even head_dim",
                )
        p.check(self.rope_base > 1, "model.rope_base", self.rope_base, "must be > 1 (paper: 10000)")
        for name in ("alpha_attn_scale", "alpha_mlp_scale", "s_qk_scale", "s_uv_scale", "s_z_scale"):
            value = getattr(self, name)
            p.check(
                value is None or value > 0,
                f"model.{name}",
                value,
                "must be > 0 (the stored value is divided by it) or null for 1/sqrt(n_embd)",
            )
        if self.is_ngpt:
            for init_name in dict.fromkeys(init for init, _ in SCALINGS):
                p.check(
                    getattr(self, init_name) != 0,
                    f"model.{init_name}",
                    getattr(self, init_name),
                    "must not be 0: the forward multiplies the stored vector by init / scale, so a zero init is a "
                    "vector that stays 0 (its gradient is 0) and never learns (paper: alpha 0.05, s 1)",
                )
        p.check(self.init_std > 0, "model.init_std", self.init_std, "must be > 0")
        p.check(self.norm_eps > 0, "model.norm_eps", self.norm_eps, "must be > 0")
        self._check_float32_range(p)
        p.raise_if_any()
        return self

    def _check_float32_range(self, p: Problems) -> None:
        """Constants the model turns into float32 must stay finite and non-zero there: s_qk_scale 1e-300 was
        stored as 0 and multiplied by init / scale = inf (NaN logits), s_z_scale 1e300 overflowed building
        the model, rope_base 1e300 left all but one pair of each head unrotated."""
        for f in fields(self):
            if "float" not in str(f.type):
                continue  # the size fields have their own bounds (MAX_SIZES, MAX_N_LAYER)
            value = getattr(self, f.name)
            # Whole numbers too (a float field takes an int: rope_base 10**39 trained with inf, 10**400 stopped
            # build_model), compared as they are: float() of 10**400 is an OverflowError.
            if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > FLOAT32_MAX:
                p.add(
                    f"model.{f.name}",
                    value,
                    f"is beyond float32's range ({FLOAT32_MAX:.3g}); the model computes in float32",
                )
        if not isinstance(self.n_embd, int) or not 0 < self.n_embd <= MAX_SIZES["n_embd"][0]:
            return  # 1/sqrt(n_embd) below is the default of each scale; the width is reported above
        too_small = set()  # s_uv_scale serves two vectors: named once
        for init_name, scale_name in SCALINGS:
            init, scale = getattr(self, init_name), getattr(self, scale_name)
            if scale is not None and not 0 < scale <= FLOAT32_MAX or abs(init) > FLOAT32_MAX or scale_name in too_small:
                continue  # reported above
            scale = self.resolved_scale(scale)
            if scale < FLOAT32_TINY:
                too_small.add(scale_name)
                p.add(
                    f"model.{scale_name}",
                    scale,
                    f"is below float32's smallest normal number ({FLOAT32_TINY:.3g}): the stored vector starts at "
                    "this value and would be 0",
                )
            elif abs(init / scale) > FLOAT32_MAX:
                p.add(
                    f"model.{init_name}",
                    init,
                    f"divided by {scale_name} = {scale:g} (the forward multiplier init / scale) is beyond float32's "
                    f"range ({FLOAT32_MAX:.3g}); bring the two closer",
                )

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "model config") -> ModelConfig:
        """Build from a mapping (a YAML `model:` section); unknown keys are errors."""
        if not isinstance(values, dict):
            raise NgptConfigError(f"{source}: the model section must be a mapping, got {type(values).__name__}")
        known = [f.name for f in fields(cls)]
        p = Problems(source)
        p.unknown_fields("model", values, known, lambda key: f" (known fields: {', '.join(sorted(known))})")
        p.raise_if_any()
        return cls(**values).validate(source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A preset name (e.g. 'ngpt_tiny') or a YAML file path -> an existing path."""
    path = Path(name_or_path)
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    link = broken_link(path)
    if link:
        raise NgptConfigError(f"config {path} {link}")
    if path.is_dir():
        if "/" not in name_or_path and preset.is_file():
            # A folder is never a config, so a bare preset name means the preset even where the working folder
            # holds a folder of that name (an --out or an export named after the preset): it was refused.
            return preset
        raise NgptConfigError(
            f"config {path} is a folder, not a YAML file: give a file such as {path / 'model.yaml'} or one of the "
            f"presets: {', '.join(preset_names())}"
        )
    if path.suffix in (".yaml", ".yml") or path.exists():
        special = special_file(path)
        if special:
            raise NgptConfigError(f"config {path} {special}")
        if not path.is_file():
            if "/" not in name_or_path and (PRESET_DIR / path.with_suffix(".yaml").name).is_file():
                # the preset's file name, written as the docs' `ngpt_ds/model/presets/ngpt_tiny.yaml` shows it
                raise NgptConfigError(
                    f"config file {path} does not exist here; the preset of that name is --config {path.stem} "
                    "(without .yaml)"
                )
            raise NgptConfigError(
                f"config file {path} does not exist. Give a YAML file or one of the "
                f"presets: {', '.join(preset_names())}"
            )
        return path
    if not preset.is_file():
        close = difflib.get_close_matches(name_or_path, preset_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise NgptConfigError(
            f"unknown preset {name_or_path!r}{hint}. Presets: {', '.join(preset_names())}; or give the path of a "
            "YAML file"
        )
    return preset


INT_TAG, FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


def yaml11_number_problem(text: str, value: int | float) -> str | None:
    """What is wrong with a number written as `text` as YAML 1.1 (PyYAML) reads it, where a reader of the file sees another number:
    a leading zero makes it octal (`max_steps: 010000` trained 4096 steps, `seed: 0123` seeded 83) and colons
    make it base 60 (`max_steps: 1:30` trained 90). None for any other number, and for a leading zero that
    changes nothing (`0007`)."""
    digits = text.replace("_", "").lstrip("+-")
    if ":" in digits:
        return f"is read by YAML as the base-60 number {value!r}; write the number itself, e.g. {value!r}"
    if isinstance(value, int) and len(digits) > 1 and digits[0] == "0" and digits[1] not in "xXbB":
        decimal = int(digits, 10)
        if decimal != abs(value):
            return (
                f"is read by YAML as the octal number {value}, not {'-' if value < 0 else ''}{decimal}: write "
                f"it without the leading zero (or {value}, if the octal number was meant)"
            )
    return None


def load_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML config file into a mapping; duplicate keys, keys that YAML reads as values (`on:`,
    `1:`), numbers that YAML 1.1 reads as others (`010`: 8, `1:30`: 90; yaml11_number_problem), syntax errors
    and a file without settings (empty, or only comments) are named. Merge keys
    (`<<: *defaults`) work as in any YAML reader: the keys written next to them override the merged ones."""

    def check_key(loader: yaml.SafeLoader, key_node: yaml.Node) -> str:
        key = loader.construct_object(key_node)
        if not isinstance(key, str):  # YAML 1.1: `on:`, `no:` are booleans, `1:` a number, `~:` null
            raise NgptConfigError(
                f"{path}: key {key!r} (line {key_node.start_mark.line + 1}) is not a name: YAML reads "
                "on/off/yes/no/true/false, numbers and ~/null unquoted as values; quote the key, or "
                "correct it to a field name"
            )
        return key

    def check_number(loader: yaml.SafeLoader, name: str, node: yaml.Node) -> None:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (INT_TAG, FLOAT_TAG):
            return
        value = (loader.construct_yaml_int if node.tag == INT_TAG else loader.construct_yaml_float)(node)
        problem = yaml11_number_problem(str(node.value), value)
        if problem:
            raise NgptConfigError(f"{path}: {name} = {node.value} (line {node.start_mark.line + 1}) {problem}")

    class StrictLoader(yaml_safe.Loader):  # merge keys bounded: a 600-byte file held 9^9 entries
        def flatten_mapping(self, node: yaml.MappingNode) -> None:
            # Duplicates among the keys written in a mapping, not the merged ones, which they may override;
            # checked here, before its first merge keeps one entry per key (a mapping merged into another is
            # flattened before it is built). A merge key's own tag has no constructor: checking it as a key
            # refused valid YAML.
            seen = set()
            for key_node, value_node in node.value:
                if key_node.tag == MERGE_TAG:
                    continue
                key = check_key(self, key_node)
                if key in seen:
                    raise NgptConfigError(
                        f"{path}: key {key!r} appears twice (line {key_node.start_mark.line + 1}); keep one"
                    )
                seen.add(key)
                # The value, and the items of a list value (betas: [0.9, 0.95]); one level only: aliased lists
                # nest 9^9 items in a few lines, and each mapping among them is checked here in its own turn.
                items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for index, item in enumerate(items):
                    check_number(self, key if item is value_node else f"{key}[{index}]", item)
            super().flatten_mapping(node)  # merged keys first, so that the ones written here win

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        loader.flatten_mapping(node)
        for key_node, _ in node.value:
            check_key(loader, key_node)
        return loader.construct_mapping(node, deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    try:
        text = read_config_text(path, "config")
    except OSError as err:  # a file that exists but cannot be read (permissions, EIO) was a traceback
        raise NgptConfigError(f"config {unreadable(path, err)}") from None
    except NgptConfigError:
        raise
    except UNPARSABLE as err:
        raise NgptConfigError(f"{path}: cannot be read as YAML ({type(err).__name__}: {err})") from None
    try:
        data = yaml.load(text, Loader=StrictLoader)
    except NgptConfigError:
        raise
    except yaml.YAMLError as err:
        raise NgptConfigError(f"{path}: not valid YAML: {yaml_safe.describe(err, text)}") from None
    except UNPARSABLE as err:
        raise NgptConfigError(f"{path}: cannot be read as YAML: {unparsable(err)}") from None
    if data is None:  # an empty file trained the defaults of every field, whatever the file was meant to hold
        raise NgptConfigError(
            f"{path}: holds no settings (the file is empty or only comments); give it 'model:' and 'train:' "
            f"sections, or use a preset: {', '.join(preset_names())}"
        )
    if not isinstance(data, dict):
        raise NgptConfigError(f"{path}: expected a mapping with 'model:' (and 'train:') sections")
    return data


def section(data: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    """The `name:` section of a config file's mapping (an empty one when absent or left empty)."""
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):  # dict() of it raised a TypeError traceback, or made a mapping of a list
        # Abridged as it is built: YAML aliases nest 9^9 items in a few hundred bytes, and repr() of them whole
        # (then cut) took minutes and gigabytes.
        raise NgptConfigError(
            f"{path}: the {name}: section must be a mapping of field: value lines, got "
            f"{type(value).__name__} {abridged(value)}"
        )
    return dict(value)


def load_model_config(name_or_path: str, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The `model:` section of a preset or YAML file, with optional field overrides."""
    path = resolve_config_path(name_or_path)
    values = section(load_yaml(path), "model", path)
    values.update(overrides or {})
    return ModelConfig.from_dict(values, source=f"model config ({path})")
