"""What DeepSpeed's own config parser accepts, asked of DeepSpeed rather than restated here.

DeepSpeed ignores a top-level key it does not know (a typo such as `gradient_clip` silently
trains with the default), raises a pydantic traceback for an unknown key inside a block such as
`zero_optimization`, and coerces the string "false" to False while the trainer would read it as
true. This module turns each of those into one line of a `Problems` report, before any engine.

It reads these DeepSpeed internals (tested with DeepSpeed 0.19.x):

- `deepspeed.runtime.config.DeepSpeedConfig._initialize_params`: the parser. It is run once on
  a mapping that records every top-level key asked for (the set of known keys), and once per
  block of the user's JSON (that block's errors, named after it);
- `deepspeed.runtime.config._REMOVED_TOP_LEVEL_CONFIG_KEYS`: blocks DeepSpeed has removed, with
  its own explanation;
- `deepspeed.runtime.config_utils.DeepSpeedConfigModel`: the pydantic models, for suggestions.

A block that the parser reads field by field (data_types, checkpoint, torch_autocast, ...) rather than
through a pydantic model is parsed once more as a mapping that records the fields looked up: a field of
the user's that was never looked up is reported (`_check_read_fields`).

`sequence_parallel_size` and `vocabulary_size` are read by DeepSpeedConfig outside the parser.
"""

from __future__ import annotations

import difflib
import functools
import re
import typing
from collections.abc import Set
from typing import Any

from ngpt_ds.errors import Problems

READ_OUTSIDE_THE_PARSER = ("sequence_parallel_size", "vocabulary_size")


class _LookupRecorder(dict):
    """A mapping that remembers every key looked up by [] or get()."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        super().__init__(values or {})
        self.asked: set[str] = set()

    def __getitem__(self, key: Any) -> Any:
        self.asked.add(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


class _RecordingDict(_LookupRecorder):
    """An empty mapping that remembers every key the parser looks up (get, [], in, keys())."""

    def __contains__(self, key: Any) -> bool:
        self.asked.add(key)
        return False

    def keys(self):
        return _RecordingKeys(self.asked)

    def __len__(self):  # `if param_dict and KEY in param_dict.keys()` must reach the lookup
        return 1


class _RecordingKeys(set):
    def __init__(self, asked: set[str]):
        super().__init__()
        self.asked = asked

    def __contains__(self, key: Any) -> bool:
        self.asked.add(key)
        return False


def _parser():
    from deepspeed.runtime.config import DeepSpeedConfig

    config = object.__new__(DeepSpeedConfig)

    def parse(values: dict[str, Any]) -> Any:
        config._param_dict = values
        config._initialize_params(values)
        return config

    return parse


@functools.lru_cache(maxsize=1)
def known_top_level_keys() -> frozenset[str]:
    """Every top-level key DeepSpeed's parser reads, recorded by running it on an empty config."""
    recording = _RecordingDict()
    _parser()(recording)
    return frozenset(recording.asked) | frozenset(READ_OUTSIDE_THE_PARSER)


def removed_keys() -> dict[str, str]:
    """Blocks DeepSpeed has removed -> its message (DeepSpeed raises on them itself, as a traceback)."""
    from deepspeed.runtime import config as ds_config_module

    return dict(getattr(ds_config_module, "_REMOVED_TOP_LEVEL_CONFIG_KEYS", {}))


def block(config: dict[str, Any], name: str) -> dict[str, Any]:
    """A sub-block of the JSON, or {} when absent or not an object (reported by check_blocks)."""
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def bf16_block_name(config: dict[str, Any]) -> str:
    """Where DeepSpeed reads the bf16 settings (deepspeed.runtime.precision_config.get_bfloat16_config, 0.19):
    "bf16", or its old name "bfloat16" when "bf16" is absent or null."""
    return "bf16" if config.get("bf16") is not None else "bfloat16"


def precision_of(config: dict[str, Any]) -> str:
    """As DeepSpeed reads it: `bf16` (or its old name `bfloat16` when `bf16` is absent or null), then `fp16`."""
    if block(config, bf16_block_name(config)).get("enabled") is True:
        return "bf16"
    if block(config, "fp16").get("enabled") is True:
        return "fp16"
    return "fp32"


def check_switches(value: Any, path: str, p: Problems) -> None:
    """Every `enabled` must be a JSON boolean, and no value may be the string "true"/"false":
    DeepSpeed's pydantic models coerce "false" to False, while a truth test reads it as true."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "enabled" and not isinstance(item, bool):
                p.add(where, item, "must be true or false (a JSON boolean, without quotes)")
            else:
                check_switches(item, where, p)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_switches(item, f"{path}[{i}]", p)
    elif isinstance(value, str) and value.strip().lower() in ("true", "false"):
        p.add(path, value, f"write the JSON boolean {value.strip().lower()} without quotes")


def check_keys(
    config: dict[str, Any], p: Problems, elsewhere: typing.Callable[[str], str | None] = lambda key: None
) -> None:
    """Unknown and removed top-level keys, each with DeepSpeed's reason or the closest known key. `elsewhere(key)`:
    the fix for an unknown key that belongs in another file (a model/train field), or None."""
    known = known_top_level_keys()
    removed = removed_keys()
    for key in sorted(set(config) - known):
        if key in removed:
            p.add(
                key,
                "{...}" if isinstance(config[key], dict) else config[key],
                f"DeepSpeed no longer supports it: {removed[key].split(' See ')[0]}",
            )
            continue
        fix = elsewhere(key)
        if fix:
            p.add(key, "{...}" if isinstance(config[key], dict) else config[key], fix)
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        p.add(
            key,
            "{...}" if isinstance(config[key], dict) else config[key],
            f"unknown key: DeepSpeed does not read it and would silently ignore it{hint}",
        )


def check_blocks(config: dict[str, Any], p: Problems, skip: Set[str] = frozenset()) -> None:
    """Parse each known block alone, as DeepSpeed will; report its errors under the block's name."""
    import pydantic

    parse = _parser()
    known = known_top_level_keys()
    for key in sorted(set(config) & known - set(skip) - set(READ_OUTSIDE_THE_PARSER)):
        try:
            parse({key: config[key]})
            _check_read_fields(parse, key, config[key], p)
        except pydantic.ValidationError as err:
            model = _model_named(err.title)
            for item in err.errors():
                loc = [str(part) for part in item["loc"]]
                if loc[:1] == [key]:  # models that wrap several blocks (monitors) name the block again
                    loc = loc[1:]
                field = ".".join([key, *loc])
                if item["type"] == "extra_forbidden":
                    p.add(field, item.get("input"), "unknown field" + _suggestion(model, loc))
                else:
                    p.add(field, item.get("input"), f"DeepSpeed rejects it: {item['msg']}")
        except Exception as err:  # DeepSpeed's own checks raise assorted types (asserts, TypeError on a non-mapping)
            # A block DeepSpeed reads with .get() (flops_profiler, checkpoint, ...) given as true, a number or null
            # raised AttributeError ("'bool' object has no attribute 'get'"), shown as "DeepSpeed rejects it".
            if not isinstance(config[key], dict) and _read_as_mapping(err):
                example = '{"stage": 2}' if key == "zero_optimization" else '{"enabled": true}'
                p.add(key, config[key], f"must be a JSON object, e.g. {example}")
            else:
                p.add(key, config[key], f"DeepSpeed rejects it: {type(err).__name__}: {err}")


def _read_as_mapping(err: Exception) -> bool:
    """Whether DeepSpeed's parser failed because a block it reads as a mapping was given as something else."""
    if isinstance(err, AttributeError):
        return re.search(r"has no attribute '(get|keys|items)'", str(err)) is not None
    return isinstance(err, TypeError) and ("mapping" in str(err) or "is not iterable" in str(err))


class _AskedDict(_LookupRecorder):
    """A block of the user's JSON that records which of its fields the parser looks up, and whether it
    was walked whole (iterated, copied: then each field may have been read, and none is reported)."""

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.walked = False

    def __contains__(self, key: Any) -> bool:
        self.asked.add(key)
        return super().__contains__(key)

    def __iter__(self):
        self.walked = True
        return super().__iter__()

    def keys(self):
        self.walked = True
        return super().keys()

    def items(self):
        self.walked = True
        return super().items()

    def values(self):
        self.walked = True
        return super().values()

    def copy(self):
        self.walked = True
        return dict(self)


def _check_read_fields(parse: Any, key: str, value: Any, p: Problems) -> None:
    """Fields of a block that DeepSpeed reads field by field (data_types, checkpoint, torch_autocast, ...)
    rather than through a pydantic model: a misspelt one was ignored without a word, e.g.
    `"data_types": {"grad_acum_dtype": "fp32"}` ran bf16 ZeRO 1 without fp32 gradient accumulation. Blocks parsed by a
    pydantic model (their unknown fields are its `extra_forbidden` errors) or walked whole are skipped."""
    if not isinstance(value, dict):
        return
    block = _AskedDict(value)
    try:
        parse({key: block})
    except Exception:  # the plain parse passed; a parser that refuses the recording copy says nothing
        return
    if block.walked or not block.asked:
        return
    for field in sorted(set(value) - block.asked, key=str):
        close = difflib.get_close_matches(str(field), sorted(block.asked), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"it reads {', '.join(sorted(block.asked))}"
        p.add(f"{key}.{field}", value[field], f"unknown field: DeepSpeed does not read it and would ignore it; {hint}")


def _model_named(name: str):
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel

    todo = [DeepSpeedConfigModel]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return cls
        todo.extend(cls.__subclasses__())
    return None


def _suggestion(model: Any, loc: list[str]) -> str:
    """'; did you mean ...?' from the pydantic model's fields at `loc` (nested models followed)."""
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        model = next((c for c in candidates if hasattr(c, "model_fields")), None)
    if model is None:
        return ""
    names = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
    close = difflib.get_close_matches(loc[-1], sorted(names), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; {model.__name__} accepts: {', '.join(sorted(names))}"


def dtype_names() -> tuple[str, ...]:
    """The names DeepSpeed's DtypeEnum takes (`data_types.grad_accum_dtype`): case as written, no others."""
    from deepspeed.runtime.config import DtypeEnum

    return tuple(name for member in DtypeEnum for name in member._all_values if isinstance(name, str))


def check_values(config: dict[str, Any], stage: Any, sequence_parallel: int, p: Problems) -> None:
    """Values DeepSpeed's parser accepts and its engine then fails on, after the process group has started:

    - `steps_per_print`: the engine prints when `step % steps_per_print == 0`: 0 stopped the first step in
      ZeroDivisionError, "10" in TypeError;
    - `prescale_gradients` at ZeRO 2/3 with `reduce_scatter` (DeepSpeed's default) stopped
      deepspeed.initialize in an AssertionError (the trainer turns reduce_scatter off itself at ZeRO 3 with
      sequence parallelism, ngpt_ds.parallel.sequence.deepspeed_config_for);
    - `data_types.grad_accum_dtype` (and param_dtype, buffer_dtype) are looked up in DeepSpeed's DtypeEnum as
      the engine starts: "FP32", "fp33" and 32 stopped it in ValueError ('not a valid DtypeEnum')."""
    steps = config.get("steps_per_print")
    p.check(
        steps is None or (isinstance(steps, int) and not isinstance(steps, bool) and steps > 0),
        "steps_per_print",
        steps,
        "must be a positive integer (DeepSpeed prints its own step line every this many steps; ngpt_ds logs "
        "by train.log_interval), or remove it",
    )
    zero = config.get("zero_optimization")
    reduce_scatter = zero.get("reduce_scatter", True) if isinstance(zero, dict) else True
    forced_off = stage == 3 and sequence_parallel > 1
    p.check(
        config.get("prescale_gradients") is not True
        or not isinstance(stage, int)
        or stage < 2
        or reduce_scatter is False
        or forced_off,
        "prescale_gradients",
        config.get("prescale_gradients"),
        f"DeepSpeed does not support it at ZeRO stage {stage} with reduce_scatter (its default): set "
        '"zero_optimization": {"reduce_scatter": false}, or remove prescale_gradients',
    )
    data_types = config.get("data_types")
    if isinstance(data_types, dict):
        names = dtype_names()
        for field in ("grad_accum_dtype", "param_dtype", "buffer_dtype"):
            value = data_types.get(field)
            p.check(
                value is None or (isinstance(value, str) and value in names),
                f"data_types.{field}",
                value,
                f'must be one of DeepSpeed\'s dtype names ({", ".join(names)}), as written: e.g. "fp32"',
            )


MONITORS = ("tensorboard", "csv_monitor", "wandb", "comet", "comms_logger")
"""DeepSpeed's monitor blocks (deepspeed.monitor.config.get_monitor_config) and its communication logger."""


def check_monitors(config: dict[str, Any], p: Problems) -> None:
    """DeepSpeed's monitors are refused when enabled: without an output_path they wrote DeepSpeedJobName/ into the
    working directory, outside --out; a bad output_path (csv_monitor "/proc/x/") or wandb not installed stopped
    deepspeed.initialize on every rank. The trainer writes its own TensorBoard events to <out>/tensorboard and the
    same scalars to <out>/metrics.jsonl (README "Training")."""
    for name in MONITORS:
        block = config.get(name)
        if isinstance(block, dict) and block.get("enabled") is True:
            p.add(
                f"{name}.enabled",
                True,
                "DeepSpeed's monitors are not supported: the trainer writes TensorBoard events to <out>/tensorboard "
                'and the same scalars to <out>/metrics.jsonl itself (README "Training"); remove the block',
            )
