"""Norm's backward, dx = (g - y (g . y)) / ||x||, in two C++ loops on the CPU (eager mode; used where built, see
`wanted`); the elementwise part of the eq. 10-11 update's backward in one; Norm's forward and the whole eq. 10-11
update's forward in one loop each.

`layers.tangent_rows` makes five passes over the activation through torch's operators (the product g * y, its
copy to fp32 inside the sum, the sum, y times the dot, the difference, the product with 1 / ||x||). Here a first
loop writes the product rounded to the activation's dtype straight into fp32 (what the cast inside
`sum(dtype=float32)` makes of it), torch sums it (the same reduction, so the same dot products bit for bit),
and a second loop makes y * dot, the difference and the product with the factor per value, each rounded to
the activation's dtype where torch's operators round it: the same values bit for bit
(tests/test_speed38_norm_kernel.py), in three passes. The update's dm (1 - alpha), (target - h) dm and dm alpha
(`ngpt._BlockUpdate.backward`), four of torch's passes, are one loop, the same values too. Measured in
docs/benchmarks.md ("Norm's backward in C++").

The forwards (`normalize`, `step`): torch makes 1 / ||x|| from an fp32 copy of x (`vector_norm(...,
dtype=float32)`), casts it, multiplies, and for the update lerps and does it all again (about five passes per
Norm, twelve per update). Here each row is read once and its outputs written once. The values are torch's bit for
bit, not within an ulp: the sum of squares follows the order of torch's vectorized CPU 2-norm (lanes of
product-then-sum, then the lanes left to right), whose lane count `forward_lanes` finds by comparing with torch's
operators at first use (8 on the x86-64 host measured, under torch's AVX512 kernels too); lerp follows torch's
vectorized form (one fused multiply-add per value). Where no lane count matches (another CPU's or torch's
order), or a row is not a multiple of the lanes (torch would sum a scalar tail), torch's operators run the
forward. Each row is summed by one thread, so the values do not depend on the thread count (tested at 1-3).
tests/test_speed39_forward_loops.py; measured in docs/benchmarks.md ("Norm's forward in C++").

NGPT_DS_NORM_KERNEL=1 builds the loops on first use where this machine's cache lacks them; unset, they run only
where the cache already holds them (`build` fills it); 0 keeps torch's operators. Without a toolchain, or where
the build fails, one warning and torch's operators. The C++ source and its build, cache and load:
`norm_kernel_build`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from types import ModuleType

import torch

from ngpt_ds.model import norm_kernel_build
from ngpt_ds.model.norm_kernel_build import cached as cached

#: 1: the loops, built on first use where this machine's cache lacks them; unset (or empty): the loops where the
#: cache already holds them, never a build; any other value (0): torch's operators.
NORM_KERNEL_ENV = "NGPT_DS_NORM_KERNEL"


_loaded: ModuleType | None = None
_tried = False


def tangent_rows(
    grad: torch.Tensor, y: torch.Tensor, inv_norm: torch.Tensor, dim: int, factor: torch.Tensor | None
) -> torch.Tensor | None:
    """`layers.tangent_rows(grad, y, inv_norm, dim, factor)` through the C++ loops, the same values bit for bit;
    None where they do not apply (then the caller runs torch's operators): not asked for (NGPT_DS_NORM_KERNEL),
    not built, traced by torch.compile, not the CPU, not bf16 or fp32 throughout, not the last dim, a tensor
    not contiguous, or a gradient that needs its own graph (create_graph)."""
    if not wanted() or torch.compiler.is_compiling():
        return None
    if (
        factor is None
        or grad.device.type != "cpu"
        or grad.dtype not in (torch.bfloat16, torch.float32)
        or not grad.dtype == y.dtype == factor.dtype
        or inv_norm.dtype != torch.float32
        or dim not in (-1, y.dim() - 1)
        or grad.requires_grad
        or not (grad.is_contiguous() and y.is_contiguous() and factor.is_contiguous())
        or grad.shape != y.shape
        or factor.shape not in (y.shape, (*y.shape[:-1], 1))
        or y.numel() == 0
    ):
        return None
    ops = loops()
    if ops is None:
        return None
    dot = ops.products(grad, y).sum(dim=-1, keepdim=True)
    return ops.tangent(grad, y, dot, factor)


def update_parts(
    dm: torch.Tensor, target: torch.Tensor, h: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """`ngpt._BlockUpdate.backward`'s dm (1 - alpha), (target - h) dm (alpha's gradient before its sum over the
    tokens) and dm alpha through one C++ loop, the same values bit for bit; None where it does not apply (the
    four tensors not bf16 or fp32 alike, alpha not one value per channel, not the CPU, not contiguous)."""
    if not wanted() or torch.compiler.is_compiling():
        return None
    if (
        dm.device.type != "cpu"
        or dm.dtype not in (torch.bfloat16, torch.float32)
        or not dm.dtype == target.dtype == h.dtype == alpha.dtype
        or not dm.shape == target.shape == h.shape
        or alpha.shape != dm.shape[-1:]
        or dm.numel() == 0
        or dm.requires_grad
        or not all(t.is_contiguous() for t in (dm, target, h, alpha))
    ):
        return None
    ops = loops()
    if ops is None:
        return None
    dh, terms, dtarget = ops.update(dm, target, h, alpha)
    return dh, terms, dtarget


def normalize(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """`layers._L2Normalize.forward`'s y = x * factor, inv_norm = 1 / ||x|| (fp32, [..., 1]) and factor (inv_norm
    in x's dtype, [..., 1], never copied to x's shape) through one C++ loop over the rows, the same values bit for
    bit; None where it does not apply (as `tangent_rows`, and: torch's sum order not matched on this CPU, a row
    length not a multiple of its lanes)."""
    if not _forward_applies(x, dim):
        return None
    ops = loops()
    lanes = None if ops is None else forward_lanes(ops)
    if ops is None or lanes is None or x.shape[-1] % lanes:
        return None
    y, inv_norm, factor = ops.normalize(x, lanes)
    return y, inv_norm, factor


def step(
    h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """`ngpt._BlockUpdate.forward`'s target = Norm(x), y = Norm(lerp(h, target, alpha)) and the factors it keeps
    (inv_x, inv_m in fp32, factor_x, factor_m in x's dtype, each [..., 1]) in one C++ loop over the rows, the same
    values bit for bit; returned as (target, y, inv_x, inv_m, factor_x, factor_m). None where it does not apply
    (as `normalize`, and: h, x and alpha not of one dtype and shape, alpha not one value per channel)."""
    if not _forward_applies(x, -1) or h.dtype != x.dtype or alpha.dtype != x.dtype:
        return None
    if h.shape != x.shape or alpha.shape != x.shape[-1:] or not (h.is_contiguous() and alpha.is_contiguous()):
        return None
    if type(h) is not torch.Tensor or type(alpha) is not torch.Tensor:
        return None
    if h.device.type != "cpu" or alpha.device.type != "cpu":
        return None
    ops = loops()
    lanes = None if ops is None else forward_lanes(ops)
    if ops is None or lanes is None or x.shape[-1] % lanes:
        return None
    target, y, inv_x, inv_m, factor_x, factor_m = ops.step(x, h, alpha, lanes)
    return target, y, inv_x, inv_m, factor_x, factor_m


def _forward_applies(x: torch.Tensor, dim: int) -> bool:
    return (
        wanted()
        and not torch.compiler.is_compiling()
        and type(x) is torch.Tensor  # not a fake or other subclass tensor, whose data the loop cannot read
        and x.device.type == "cpu"
        and x.dtype in (torch.bfloat16, torch.float32)
        and dim in (-1, x.dim() - 1)
        and x.dim() > 0
        and x.numel() > 0
        and x.is_contiguous()
    )


#: forward_lanes' answer per loaded module (one in a process, unless a test swaps it)
_lanes: dict[int, int | None] = {}


def forward_lanes(ops: ModuleType) -> int | None:
    """The lanes of torch's vectorized 2-norm on this CPU (8 or 16), found by comparing the forward loops `ops` with
    torch's operators, bit for bit, on fixed random rows (both dtypes, rows of 48 and 192, Norm and the update,
    lerp's both branches); None, after one warning, where neither matches (the loops then leave the forward to
    torch). torch's order is not part of its API: this check, not a CPU table, decides. On the x86-64 host
    measured (docs/benchmarks.md) it was 8 lanes, a product then a sum, under torch's AVX512 kernels too."""
    if id(ops) not in _lanes:
        lanes = next((lanes for lanes in (8, 16) if _forward_matches(ops, lanes)), None)
        _lanes[id(ops)] = lanes
        if lanes is None:
            warnings.warn(
                f"{NORM_KERNEL_ENV}: the C++ Norm forward does not give torch's values on this CPU (its 2-norm "
                "sums in another order); torch's operators run the forward, the loops the backward",
                RuntimeWarning,
                stacklevel=3,
            )
    return _lanes[id(ops)]


def _forward_matches(ops: ModuleType, lanes: int) -> bool:
    # torch's operators as the model's forward runs them: no autograd graph, no autocast around the comparison
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        return _forward_matches_here(ops, lanes)


def _forward_matches_here(ops: ModuleType, lanes: int) -> bool:
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        for n in (48, 192):
            x = torch.randn(64, n, generator=generator).mul_(3).to(dtype)
            h = torch.nn.functional.normalize(torch.randn(64, n, generator=generator), dim=-1).to(dtype)
            alpha = torch.rand(n, generator=generator).mul_(2).sub_(1).to(dtype)  # both of lerp's branches
            inv_x = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).reciprocal_()
            target = x * inv_x.to(dtype)
            m = torch.lerp(h, target, alpha)
            inv_m = torch.linalg.vector_norm(m, dim=-1, keepdim=True, dtype=torch.float32).reciprocal_()
            want = (target, m * inv_m.to(dtype), inv_x, inv_m, inv_x.to(dtype), inv_m.to(dtype))
            got = ops.step(x, h, alpha, lanes)
            if not all(torch.equal(a, b) for a, b in zip(got, want)):
                return False
            if not all(torch.equal(a, b) for a, b in zip(ops.normalize(x, lanes), (target, inv_x, inv_x.to(dtype)))):
                return False
    return True


def wanted() -> bool:
    """Whether NGPT_DS_NORM_KERNEL lets the loops run: 1, or unset (then only a build already cached)."""
    return os.environ.get(NORM_KERNEL_ENV, "") in ("", "1")


def build() -> bool:
    """Build the loops into this machine's cache now, whatever NGPT_DS_NORM_KERNEL says (what `launch/setup.sh`
    can run, so that the trainer's default finds them); True where they load and their forward matches torch's
    values here, else False after one warning (no compiler: torch's operators run, the same values)."""
    global _loaded, _tried, _absent
    _tried, _absent = False, False
    with _env_set(NORM_KERNEL_ENV, "1"):
        ops = loops()
    return ops is not None and forward_lanes(ops) is not None


@contextlib.contextmanager
def _env_set(name: str, value: str) -> Iterator[None]:
    """os.environ[name] = value inside the block, the old value (or none) after it."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


_absent = False


def loops() -> ModuleType | None:
    """The built loops: with NGPT_DS_NORM_KERNEL=1, built on the first call of this process where this machine's
    cache lacks them; unset, loaded where the cache holds them, else None (no build, no warning). None, after one
    warning, where they cannot be built or loaded."""
    global _loaded, _tried, _absent
    if not _tried:
        if os.environ.get(NORM_KERNEL_ENV) != "1":
            if _absent or not cached():
                _absent = True  # looked once: a build later in this process comes only with the switch set
                return None
        _tried = True
        try:
            _loaded = norm_kernel_build.load()
        except Exception as error:  # no compiler or ninja, a failed build, an unwritable cache: torch's operators
            warnings.warn(
                f"{NORM_KERNEL_ENV}={os.environ.get(NORM_KERNEL_ENV, '')}: Norm's C++ loops could not be built or "
                f"loaded ({type(error).__name__}: "
                f"{str(error).strip().splitlines()[-1] if str(error).strip() else ''}); torch's operators run "
                "instead (the same values, slower)",
                RuntimeWarning,
                stacklevel=3,
            )
    return _loaded
