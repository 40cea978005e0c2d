"""The DeepSpeed releases ngpt_ds is tested with, checked at startup, and a fault of them undone.

The hypersphere hook (ngpt_ds/train/hypersphere.py) reads DeepSpeed's private optimizer
attributes, which change between minor releases: 0.16.0-0.19.2 have no
`DeepSpeedZeroOptimizer_Stage3._get_param_partition_rank` (it came with 0.19.3), so ZeRO 3
failed there with an AttributeError after the process group was up; 0.16.0 and 0.19.2 were
run to confirm it. The range below is the one CI runs: the hypersphere, sphere-guard, resume
and precision tests pass on its lowest release and on TESTED (tests/run.sh runs them on both).
The upper bound stops before the next minor release, whose internals nobody has checked yet.

`check_deepspeed_version` reads the installed version from the package metadata, without
importing DeepSpeed, and runs before any process group exists, so a wrong version stops every
rank at once with the fix instead of an AttributeError deep in the first step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from ngpt_ds.errors import NgptConfigError

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

LOWEST = "0.19.3"
"""The lowest supported release: tests/run.sh runs the DeepSpeed-sensitive tests on it too."""
SUPPORTED = f">={LOWEST},<0.20"
"""DeepSpeed releases the tests pass on (setup.py's requirement is this string)."""
TESTED = "0.19.8"
"""The release launch/setup.sh installs, and the one the DeepSpeed internals were read against."""
ALLOW_UNTESTED_ENV = "NGPT_DS_ALLOW_UNTESTED_DEEPSPEED"
"""Set to 1 to run on a release outside SUPPORTED anyway (a warning instead of an error)."""

_FIX = f"pip install 'deepspeed{SUPPORTED}' (launch/setup.sh installs deepspeed=={TESTED})"


def check_deepspeed_version(installed: str | None = None, *, warn: Callable[[str], object] = print) -> str:
    """Raise NgptConfigError unless the installed DeepSpeed is in SUPPORTED; return its version.

    `installed` overrides the package metadata (for tests). Pre-release and local builds of a
    supported release (0.19.9.dev0, 0.19.8+cu124) are accepted; 0.20 pre-releases are not.
    """
    if installed is None:
        try:
            installed = metadata.version("deepspeed")
        except metadata.PackageNotFoundError:
            raise NgptConfigError(
                f"DeepSpeed is not installed; ngpt_ds supports deepspeed{SUPPORTED}. Fix: {_FIX}"
            ) from None
    try:
        ok = SpecifierSet(SUPPORTED).contains(Version(installed), prereleases=True)
    except InvalidVersion:
        ok = False
    if ok:
        return installed
    message = (
        f"DeepSpeed {installed} is installed, but ngpt_ds supports deepspeed{SUPPORTED}: the "
        f"hypersphere hook reads DeepSpeed internals that differ between releases"
    )
    if os.environ.get(ALLOW_UNTESTED_ENV) == "1":
        warn(f"warning: {message}; running anyway because {ALLOW_UNTESTED_ENV}=1")
        return installed
    raise NgptConfigError(f"{message}. Fix: {_FIX}, or set {ALLOW_UNTESTED_ENV}=1 to try it anyway")


def drop_warmup_optimizer_state(engine: DeepSpeedEngine) -> None:
    """Undo the zero-gradient step DeepSpeed's ZeRO-0 bf16/fp16 optimizer takes at creation.

    `FP16_UnfusedOptimizer.__init__` (ZeRO 0 with bf16, or fp16) calls the torch optimizer's
    step() once on zero gradients to create its state. Adam's step count then starts at 1, its
    bias correction is off by one step, and the first real update is 0.73x the size it has in
    fp32 or under ZeRO 1-3 (beta1 0.9, beta2 0.95; tests/test_precision.py measures it). Dropping
    the state is exact: torch's Adam creates it afresh at the first real step, and a checkpoint
    load replaces it anyway. That step moved no weight: Adam's update of a zero gradient is 0,
    nGPT has no weight decay, and GPT's decay is scaled by the LR its warmup holds at 0 then
    (with train.warmup_steps 0 the GPT matrices shrink once by 1 - lr * weight_decay).
    """
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    if isinstance(engine.optimizer, FP16_UnfusedOptimizer):
        engine.optimizer.optimizer.state.clear()
