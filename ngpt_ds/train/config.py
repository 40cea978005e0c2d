"""Training configuration: the YAML `train:` section, and the merged effective config of a run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

import yaml

from ngpt_ds import log
from ngpt_ds.errors import NgptConfigError, Problems
from ngpt_ds.model.config import FLOAT32_MAX, ModelConfig, load_yaml, resolve_config_path, section

MAX_DIST_TIMEOUT_S = 10**9
"""The largest train.dist_timeout_s: far beyond any job, well within what timedelta and torch represent."""

_log = log.get(__name__)


@dataclass(kw_only=True)
class TrainConfig:
    """Optimization, evaluation, logging and checkpointing of a run.

    Batch sizes, precision, ZeRO stage and gradient clipping are not here: the
    DeepSpeed JSON is their single source.
    """

    max_steps: int = 200
    """Optimizer steps to train for; the cosine schedule ends at this step."""
    lr: float = 3e-3
    """Peak learning rate (the official launcher uses 3e-3 at 0.5B; tiny models want more for nGPT)."""
    min_lr: float = 0.0
    """Learning rate at max_steps (the paper anneals to 0)."""
    warmup_steps: int | None = None
    """Linear warmup steps. None: 0 for nGPT (PAPER Table 3), min(2000, max_steps // 10) for GPT."""
    weight_decay: float | None = None
    """AdamW weight decay on matrices only. None: 0.0 for nGPT, 0.1 for GPT."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (official code)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    seed: int = 1234
    """Seed of model init and data order."""
    eval_interval: int = 50
    """Evaluate on the validation split every this many steps (and at the end); 0: only at the end."""
    eval_batches: int = 8
    """Validation micro-batches per rank per evaluation (the same windows every time)."""
    log_interval: int = 10
    """Write a log line and TensorBoard scalars every this many steps."""
    checkpoint_interval: int = 100
    """Save a checkpoint every this many steps (and at the end); 0: only at the end."""
    keep_checkpoints: int = 2
    """Keep the newest this many complete checkpoints; older ones are deleted."""
    peak_tflops: float | None = None
    """Peak dense TFLOP/s of one device for MFU. None: a table for known GPUs, a matmul measurement on CPU."""
    dist_timeout_s: int = 600
    """Collective timeout: a dead rank ends the job after this many seconds instead of hanging."""
    stop_grace_s: float = 25.0
    """Seconds after SIGTERM, SIGINT, SIGHUP or the launcher's exit by which the stop's checkpoint must
    be saved: below the sender's kill timeout (DeepSpeed's launcher and torchrun: 30 s). A save that
    would not fit is skipped with a message and exit status 75; the previous checkpoint stays."""
    tensor_parallel_size: int = 1
    """Ranks that split each layer (Megatron-style); must divide the world size, n_head, vocab_size
    and the MLP width. The remaining factor of the world size is data parallelism (ZeRO)."""
    pipeline_parallel_size: int = 1
    """Pipeline stages, each holding consecutive blocks (DeepSpeed's PipelineModule; the first also the
    embedding, the last the head). Must divide the world size and not exceed n_layer; ZeRO 1 (or ZeRO 0
    in fp32); not combined with tensor or sequence parallelism (README "Pipeline parallelism")."""
    sequence_parallel_size: int = 1
    """Ranks that split each sequence (DeepSpeed-Ulysses): each holds seq_len / S positions, attention
    all-to-alls the heads. Must divide the world size, n_head and seq_len; not combined with tensor or
    pipeline parallelism (README "Sequence parallelism (Ulysses)")."""
    activation_checkpointing: str | dict = "none"
    """Recompute block activations in backward instead of storing them: `none`; `blocks` (every
    transformer block keeps only its input); or `{every_k: K}` (blocks 0, K, 2K, ... do). Gradients are
    bit-identical to `none`; it costs one more forward of the checkpointed blocks (README)."""
    compile: bool = False
    """Compile the model with torch.compile through DeepSpeed's `engine.compile()` (in place: the
    state-dict keys and checkpoints stay those of the eager model). The first steps and the first
    evaluation wait for the compilation (README "Compile")."""

    @property
    def checkpoint_every(self) -> int:
        """activation_checkpointing as the model's `checkpoint_every`: 0 (off), 1 (blocks) or K."""
        mode = self.activation_checkpointing
        if isinstance(mode, dict):
            return mode["every_k"]
        return {"none": 0, "blocks": 1}[mode]

    def resolve(self, model: ModelConfig | str) -> TrainConfig:
        """Fill the architecture-dependent defaults: nGPT trains without weight decay or warm-up
        (paper, section 3 and appendix A.5); the GPT baseline with decay 0.1 and a warm-up of
        a tenth of the steps (at most 2000). `model`: the model config, or its arch name."""
        ngpt = (ModelConfig(arch=model) if isinstance(model, str) else model).is_ngpt
        if self.weight_decay is None:
            self.weight_decay = 0.0 if ngpt else 0.1
        if self.warmup_steps is None:
            self.warmup_steps = 0 if ngpt else min(2000, self.max_steps // 10)
        # YAML gives a list of any length; validate() checks that there are two.
        self.betas = cast("tuple[float, float]", tuple(self.betas))
        return self

    def validate(self, source: str = "train config") -> TrainConfig:
        p = Problems(source)
        for name in (
            "max_steps",
            "log_interval",
            "eval_batches",
            "keep_checkpoints",
            "dist_timeout_s",
            "tensor_parallel_size",
            "sequence_parallel_size",
            "pipeline_parallel_size",
        ):
            value = getattr(self, name)
            p.check(isinstance(value, int) and value > 0, f"train.{name}", value, "must be a positive integer")
        for name in ("eval_interval", "checkpoint_interval", "warmup_steps"):
            value = getattr(self, name)
            p.check(
                value is None or (isinstance(value, int) and value >= 0),
                f"train.{name}",
                value,
                "must be an integer >= 0",
            )
        # Python's timedelta, which the process group's timeout is, stops below 10**14 s: a larger value (meant as
        # "never") stopped every rank at startup in an OverflowError traceback.
        p.check(
            not isinstance(self.dist_timeout_s, int) or self.dist_timeout_s <= MAX_DIST_TIMEOUT_S,
            "train.dist_timeout_s",
            self.dist_timeout_s,
            f"must be at most {MAX_DIST_TIMEOUT_S} seconds (about 31 years)",
        )
        # torch.manual_seed takes [0, 2**64) (larger: 'Overflow when unpacking long long' as the engine
        # started) and the data order's np.random.default_rng no negative seed (a ValueError at step 1).
        p.check(
            isinstance(self.seed, int) and 0 <= self.seed < 2**64,
            "train.seed",
            self.seed,
            "must be an integer in [0, 2**64 - 1]",
        )
        p.check(self.lr > 0, "train.lr", self.lr, "must be > 0")
        # Against an lr that is itself refused, a sound min_lr (0.0) was named as a second problem.
        p.check(
            0 <= self.min_lr <= self.lr or (self.lr <= 0 and self.min_lr >= 0),
            "train.min_lr",
            self.min_lr,
            f"must be in [0, lr = {self.lr}]",
        )
        p.check(
            self.weight_decay is None or self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0"
        )
        p.check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "train.betas",
            self.betas,
            "must be two numbers in [0, 1), e.g. [0.9, 0.95]",
        )
        p.check(self.eps > 0, "train.eps", self.eps, "must be > 0")
        p.check(
            isinstance(self.stop_grace_s, (int, float))
            and not isinstance(self.stop_grace_s, bool)
            and 0 <= self.stop_grace_s <= MAX_DIST_TIMEOUT_S,
            "train.stop_grace_s",
            self.stop_grace_s,
            "must be a number of seconds >= 0, below the launcher's kill timeout (30 s for deepspeed and torchrun)",
        )
        for f in fields(self):
            value = getattr(self, f.name)
            # A float field takes a whole number, which the checks above let through at any size: lr or
            # stop_grace_s 10**400 passed them and stopped the run in an OverflowError once it used them.
            p.check(
                "float" not in str(f.type)
                or f.name == "stop_grace_s"  # below, in seconds
                or not isinstance(value, (int, float))
                or isinstance(value, bool)
                or abs(value) <= FLOAT32_MAX,
                f"train.{f.name}",
                value,
                f"is beyond float32's range ({FLOAT32_MAX:.3g}), in which the trainer computes",
            )
        mode = self.activation_checkpointing
        p.check(
            mode in ("none", "blocks")
            if isinstance(mode, str)
            else (
                isinstance(mode, dict)
                and set(mode) == {"every_k"}
                and isinstance(mode["every_k"], int)
                and not isinstance(mode["every_k"], bool)
                and mode["every_k"] >= 1
            ),
            "train.activation_checkpointing",
            mode,
            "must be none, blocks, or {every_k: K} with an integer K >= 1",
        )
        p.check(
            self.peak_tflops is None or self.peak_tflops > 0,
            "train.peak_tflops",
            self.peak_tflops,
            "must be > 0 or null",
        )
        if isinstance(self.warmup_steps, int) and isinstance(self.max_steps, int):
            p.check(
                self.warmup_steps <= self.max_steps,
                "train.warmup_steps",
                self.warmup_steps,
                f"must not exceed max_steps = {self.max_steps}",
            )
        p.raise_if_any()
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "train config") -> TrainConfig:
        if not isinstance(values, dict):
            raise NgptConfigError(f"{source}: the train section must be a mapping")
        p = Problems(source)
        p.unknown_fields(
            "train",
            values,
            [f.name for f in fields(cls)],
            lambda key: (
                '. Batch sizes, precision (the JSON\'s "bf16": {"enabled": true} or "fp16"), ZeRO stage and gradient '
                "clipping belong in the DeepSpeed JSON (--deepspeed_config)"
                # train.dtype / precision / mixed_precision said only 'unknown field', as if precision had no switch
                if any(
                    w in key.lower() for w in ("batch", "bf16", "fp16", "zero", "clip", "accum", "dtype", "precision")
                )
                else ""
            ),
        )
        p.raise_if_any()
        config = cls(**values)
        mode = config.activation_checkpointing
        if isinstance(mode, bool) or mode is None:
            # YAML reads `off` and `no` (the words one writes for "none") as false: the message was "= False: must
            # be a string or dict", which names neither what was written nor what to write.
            p.add(
                "train.activation_checkpointing",
                mode,
                "YAML reads off/no/false, on/yes/true and null unquoted as values, not modes: write none, blocks or "
                "{every_k: K}",
            )
            config.activation_checkpointing = "none"  # named above; wrong_types would name it again
        elif not isinstance(mode, str | dict):
            # `activation_checkpointing: 2` (meaning every 2 blocks) said only "must be a string or dict".
            p.add(
                "train.activation_checkpointing",
                mode,
                f"write none, blocks, or {{every_k: K}} (every K-th block; {{every_k: {mode}}} for every {mode})"
                if isinstance(mode, int)
                else "write none, blocks, or {every_k: K}",
            )
            config.activation_checkpointing = "none"
        p.wrong_types("train", config)  # before resolve/validate compare or convert them
        p.raise_if_any()
        return config


@dataclass
class RunConfig:
    """Everything one run uses, merged once at startup, printed and saved with every checkpoint."""

    config_source: str
    """--config as given (often relative to the folder training ran in)."""
    model: ModelConfig
    train: TrainConfig
    deepspeed: dict[str, Any]
    deepspeed_source: str
    data_dir: str
    """--data as given (often relative to the folder training ran in)."""
    out_dir: str
    data_dir_absolute: str | None = None
    """data_dir made absolute against the folder training ran in: a resume or evaluation from another folder
    reads the dataset there, not whatever the relative data_dir names in its own folder."""
    tokenizer_sha256: str | None = None
    """sha256 of the dataset's tokenizer.model: a resume on data from another tokenizer is refused."""
    config_source_absolute: str | None = None
    """config_source made absolute against the folder training ran in: which file a run was trained from, wherever
    the next run starts (retention keeps another config's checkpoints; ngpt_ds.train.config_identity)."""
    config_source_sha256: str | None = None
    """sha256 of the config file's bytes when the run started: the same file seen under another path on another
    node (its own mount point of shared storage), where config_source_absolute names nothing
    (ngpt_ds.train.config_identity)."""
    train_data_sha256: str | None = None
    """Fingerprint of the training split's shards and block hashes (ngpt_ds.train.preflight.
    train_data_fingerprint; None without block hashes): a resume on other training data is refused."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "config_source": self.config_source,
            "config_source_absolute": self.config_source_absolute,
            "config_source_sha256": self.config_source_sha256,
            "model": self.model.to_dict(),
            "train": {**dataclasses.asdict(self.train), "betas": list(self.train.betas)},
            "deepspeed_source": self.deepspeed_source,
            "deepspeed": self.deepspeed,
            "data_dir": self.data_dir,
            "data_dir_absolute": self.data_dir_absolute,
            "tokenizer_sha256": self.tokenizer_sha256,
            "train_data_sha256": self.train_data_sha256,
            "out_dir": self.out_dir,
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


DEEPSPEED_KEYS = frozenset(
    {
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "zero_optimization",
        "bf16",
        "fp16",
        "gradient_clipping",
        "optimizer",
        "scheduler",
        "steps_per_print",
        "wall_clock_breakdown",
    }
)
"""Top-level keys of a DeepSpeed JSON: a file given to --config that has them and no model/train is one."""


def misplaced_fields(data: dict[str, Any], path: Path) -> None:
    """Refuse, naming where each belongs, the fields of one section written in the other or at the top level
    (`lr:` under model:, `seq_len:` under train:, `max_steps:` not indented): they were called unknown, as if
    misspelled ("model.lr = 0.001: unknown field Known fields: alpha_attn_init, ...", "unknown top-level
    section(s) max_steps"), with every model field listed and no word of the section that has them."""
    homes = {"model": {f.name for f in fields(ModelConfig)}, "train": {f.name for f in fields(TrainConfig)}}
    p = Problems(str(path))
    for key in sorted(set(data) - set(homes), key=str):
        home = next((name for name, names in homes.items() if key in names), None)
        if home is not None:
            p.add(key, data[key], f"a {home}: field written at the top level; indent it under {home}:")
    for name, other in (("model", "train"), ("train", "model")):
        values = data.get(name)
        if isinstance(values, dict):
            for key in sorted(set(values) & (homes[other] - homes[name]), key=str):
                p.add(f"{name}.{key}", values[key], f"a {other}: field, not a {name}: one; move it under {other}:")
    p.raise_if_any()


def load_model_and_train(
    name_or_path: str, arch: str | None = None, train_overrides: dict[str, Any] | None = None
) -> tuple[ModelConfig, TrainConfig, Path]:
    """Read a preset or YAML file into validated model and train configs.

    `arch` (the --model option) must agree with the file's model.arch: a preset's
    training settings belong to its architecture.
    """
    path = resolve_config_path(name_or_path)
    data = load_yaml(path)
    unknown = sorted(set(data) - {"model", "train"})
    deepspeed_keys = sorted(set(unknown) & DEEPSPEED_KEYS)
    if deepspeed_keys and not {"model", "train"} & set(data):  # a DeepSpeed JSON given to --config
        raise NgptConfigError(
            f"{path} is a DeepSpeed config (it sets {', '.join(deepspeed_keys)}), not a model/train config: pass "
            f"it with --deepspeed_config {path}, and give --config a preset such as ngpt_tiny or a YAML file "
            "with 'model:' and 'train:' sections"
        )
    misplaced_fields(data, path)
    if unknown:
        raise NgptConfigError(
            f"{path}: unknown top-level section(s) {', '.join(unknown)}; expected 'model:' and 'train:'"
        )
    model_values, train_values = section(data, "model", path), section(data, "train", path)
    train_values.update(train_overrides or {})
    try:
        model = ModelConfig.from_dict(model_values, source=f"model config ({path})")
    except NgptConfigError as model_err:
        # The train: section's problems too, in the same error: a typo in each section (n_embed, warmup_step) took
        # two starts of every rank to find, the second named only once the first was fixed.
        arch = model_values.get("arch")
        try:
            train = TrainConfig.from_dict(train_values, source=f"train config ({path})")
            train.resolve(arch if arch in ("ngpt", "gpt") else "ngpt").validate(source=f"train config ({path})")
        except NgptConfigError as train_err:
            raise NgptConfigError(f"{model_err}\n{train_err}") from None
        raise
    if not data.get("model"):
        # A YAML of train: alone trained ModelConfig's built-in shape without a word: neither the tiny preset
        # nor what the file's name suggests.
        _log.warning(
            f"note: {path} has no model: section (or an empty one): training the built-in model defaults "
            f"({model.arch}, n_layer {model.n_layer}, n_embd {model.n_embd}, n_head {model.n_head}, seq_len "
            f"{model.seq_len}), not a preset; add a model: section (the {model.arch}_tiny preset's, "
            f"ngpt_ds/model/presets/{model.arch}_tiny.yaml, is one to copy) to choose the model"
        )
    if arch is not None and arch != model.arch:
        raise NgptConfigError(
            f"--model {arch} conflicts with {path} (model.arch: {model.arch}). "
            f"Use --config {arch}_tiny (or another {arch} preset), or drop --model"
        )
    train = TrainConfig.from_dict(train_values, source=f"train config ({path})").resolve(model)
    train.validate(source=f"train config ({path})")
    return model, train, path
