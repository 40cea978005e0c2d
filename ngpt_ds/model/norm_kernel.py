"""Norm's backward, dx = (g - y (g . y)) / ||x||, in two C++ loops on the CPU (eager mode), opt-in; and the
elementwise part of the eq. 10-11 update's backward in one.

`layers.tangent_rows` makes five passes over the activation through torch's operators (the product g * y, its
copy to fp32 inside the sum, the sum, y times the dot, the difference, the product with 1 / ||x||). Here a first
loop writes the product rounded to the activation's dtype straight into fp32 (what the cast inside
`sum(dtype=float32)` makes of it), torch sums it (the same reduction, so the same dot products bit for bit),
and a second loop makes y * dot, the difference and the product with the factor per value, each rounded to
the activation's dtype where torch's operators round it: the same values bit for bit
(tests/test_speed38_norm_kernel.py), in three passes. The update's dm (1 - alpha), (target - h) dm and dm alpha
(`ngpt._BlockUpdate.backward`), four of torch's passes, are one loop, the same values too. Measured in docs/benchmarks.md ("Norm's backward in
C++").

Off unless NGPT_DS_NORM_KERNEL=1, because the loops are C++ built on first use with torch's extension builder
(a C++ compiler and ninja; about 30 s of CPU time), cached per machine under TORCH_EXTENSIONS_DIR or
~/.cache/torch_extensions. Without a toolchain, or where the build fails, one warning and torch's operators.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

#: Set to 1 to run Norm's eager CPU backward through these loops.
NORM_KERNEL_ENV = "NGPT_DS_NORM_KERNEL"
#: How long a process waits for another one's build of the loops before it goes on without them.
BUILD_WAIT_S = 600.0

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

// g * y rounded to T (as torch's elementwise product of two T tensors), written as fp32.
template <typename T>
static void products_impl(const T* g, const T* y, float* out, int64_t count) {
  at::parallel_for(0, count, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      out[i] = static_cast<float>(static_cast<T>(static_cast<float>(g[i]) * static_cast<float>(y[i])));
  });
}

// ((g - y * T(dot)) * factor) per value, the product, the difference and the last product each rounded to T.
// factor: one per row, or one per value (`full`).
template <typename T>
static void tangent_impl(const T* g, const T* y, const float* dot, const T* factor, bool full, T* out,
                         int64_t rows, int64_t n) {
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float d = static_cast<float>(static_cast<T>(dot[r]));
      const T* gr = g + r * n;
      const T* yr = y + r * n;
      T* o = out + r * n;
      // two loops, not one with a stride of 0 or 1 for the factor: that one was not vectorized
      if (full) {
        const T* fr = factor + r * n;
        for (int64_t i = 0; i < n; ++i) {
          const T along = static_cast<T>(static_cast<float>(yr[i]) * d);
          const T tangent = static_cast<T>(static_cast<float>(gr[i]) - static_cast<float>(along));
          o[i] = static_cast<T>(static_cast<float>(tangent) * static_cast<float>(fr[i]));
        }
      } else {
        const float f = static_cast<float>(factor[r]);
        for (int64_t i = 0; i < n; ++i) {
          const T along = static_cast<T>(static_cast<float>(yr[i]) * d);
          const T tangent = static_cast<T>(static_cast<float>(gr[i]) - static_cast<float>(along));
          o[i] = static_cast<T>(static_cast<float>(tangent) * f);
        }
      }
    }
  });
}

// Eq. 10-11's update after its outer Norm's backward: dh = dm (1 - alpha), the terms (target - h) dm of alpha's
// gradient (summed over the tokens by torch), dtarget = dm alpha; 1 - alpha and each difference and product
// rounded to T, as torch's operators round them.
template <typename T>
static void update_impl(const T* __restrict__ dm, const T* __restrict__ target, const T* __restrict__ h,
                        const T* __restrict__ alpha, T* __restrict__ dh, T* __restrict__ terms,
                        T* __restrict__ dtarget, int64_t rows, int64_t n) {
  std::vector<float> a(n), rest(n);
  for (int64_t i = 0; i < n; ++i) {
    a[i] = static_cast<float>(alpha[i]);
    rest[i] = static_cast<float>(static_cast<T>(1.0f - a[i]));
  }
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t o = r * n;
      const float* __restrict__ ap = a.data();
      const float* __restrict__ rp = rest.data();
      // three loops of one output each: one loop writing all three ran 2.3x torch's time in bf16 (not vectorized)
      for (int64_t i = 0; i < n; ++i) dh[o + i] = static_cast<T>(static_cast<float>(dm[o + i]) * rp[i]);
      for (int64_t i = 0; i < n; ++i) {
        const T apart = static_cast<T>(static_cast<float>(target[o + i]) - static_cast<float>(h[o + i]));
        terms[o + i] = static_cast<T>(static_cast<float>(apart) * static_cast<float>(dm[o + i]));
      }
      for (int64_t i = 0; i < n; ++i) dtarget[o + i] = static_cast<T>(static_cast<float>(dm[o + i]) * ap[i]);
    }
  });
}

std::vector<torch::Tensor> update(torch::Tensor dm, torch::Tensor target, torch::Tensor h, torch::Tensor alpha) {
  auto dh = torch::empty_like(dm), terms = torch::empty_like(dm), dtarget = torch::empty_like(dm);
  const int64_t n = dm.size(-1), rows = dm.numel() / n;
  if (dm.scalar_type() == at::kBFloat16)
    update_impl<c10::BFloat16>(dm.data_ptr<c10::BFloat16>(), target.data_ptr<c10::BFloat16>(),
                               h.data_ptr<c10::BFloat16>(), alpha.data_ptr<c10::BFloat16>(),
                               dh.data_ptr<c10::BFloat16>(), terms.data_ptr<c10::BFloat16>(),
                               dtarget.data_ptr<c10::BFloat16>(), rows, n);
  else
    update_impl<float>(dm.data_ptr<float>(), target.data_ptr<float>(), h.data_ptr<float>(), alpha.data_ptr<float>(),
                       dh.data_ptr<float>(), terms.data_ptr<float>(), dtarget.data_ptr<float>(), rows, n);
  return {dh, terms, dtarget};
}

torch::Tensor products(torch::Tensor g, torch::Tensor y) {
  auto out = torch::empty(y.sizes(), y.options().dtype(at::kFloat));
  if (y.scalar_type() == at::kBFloat16)
    products_impl<c10::BFloat16>(g.data_ptr<c10::BFloat16>(), y.data_ptr<c10::BFloat16>(), out.data_ptr<float>(),
                                 y.numel());
  else
    products_impl<float>(g.data_ptr<float>(), y.data_ptr<float>(), out.data_ptr<float>(), y.numel());
  return out;
}

torch::Tensor tangent(torch::Tensor g, torch::Tensor y, torch::Tensor dot, torch::Tensor factor) {
  auto out = torch::empty_like(y);
  const int64_t n = y.size(-1), rows = y.numel() / n;
  const bool full = factor.numel() == y.numel();
  if (y.scalar_type() == at::kBFloat16)
    tangent_impl<c10::BFloat16>(g.data_ptr<c10::BFloat16>(), y.data_ptr<c10::BFloat16>(), dot.data_ptr<float>(),
                                factor.data_ptr<c10::BFloat16>(), full, out.data_ptr<c10::BFloat16>(), rows, n);
  else
    tangent_impl<float>(g.data_ptr<float>(), y.data_ptr<float>(), dot.data_ptr<float>(), factor.data_ptr<float>(),
                        full, out.data_ptr<float>(), rows, n);
  return out;
}
"""

#: -ffp-contract=off: no fused multiply-add in the float loops, which would round y * dot and the difference
#: once instead of twice. -march=native: vectorized bf16 conversions (with x86-64's baseline the loops ran
#: 1.18x torch's time for the stream's bf16 Norm, against 0.54x); the cache's key holds the CPU's model and
#: flags, so a home shared by hosts of other CPUs holds one build each.
_FLAGS = ("-O3", "-march=native", "-ffp-contract=off")

_loaded: ModuleType | None = None
_tried = False


def tangent_rows(
    grad: torch.Tensor, y: torch.Tensor, inv_norm: torch.Tensor, dim: int, factor: torch.Tensor | None
) -> torch.Tensor | None:
    """`layers.tangent_rows(grad, y, inv_norm, dim, factor)` through the C++ loops, the same values bit for bit;
    None where they do not apply (then the caller runs torch's operators): not asked for (NGPT_DS_NORM_KERNEL),
    not built, traced by torch.compile, not the CPU, not bf16 or fp32 throughout, not the last dim, a tensor
    not contiguous, or a gradient that needs its own graph (create_graph)."""
    if os.environ.get(NORM_KERNEL_ENV) != "1" or torch.compiler.is_compiling():
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
    if os.environ.get(NORM_KERNEL_ENV) != "1" or torch.compiler.is_compiling():
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


def loops() -> ModuleType | None:
    """The built loops, building them on the first call of this process where this machine's cache lacks them;
    None, after one warning, where they cannot be built."""
    global _loaded, _tried
    if not _tried:
        _tried = True
        try:
            _loaded = _load()
        except Exception as error:  # no compiler or ninja, a failed build, an unwritable cache: torch's operators
            warnings.warn(
                f"{NORM_KERNEL_ENV}=1: Norm's C++ backward could not be built or loaded ({type(error).__name__}: "
                f"{str(error).strip().splitlines()[-1] if str(error).strip() else ''}); torch's operators run "
                "instead (the same values, slower)",
                RuntimeWarning,
                stacklevel=3,
            )
    return _loaded


def _load() -> ModuleType:
    key = "\0".join((_SOURCE, *_FLAGS, torch.__version__, sys.version, platform.machine(), _cpu()))
    name = "ngpt_ds_norm_" + hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    library = folder / f"{name}.so"
    # flock, not a lock file: a process killed while building releases it, so no later one waits for ever (torch's
    # own build folder lock would); one build per machine however many ranks start at once.
    with open(folder / "lock", "w") as lock:
        deadline = time.monotonic() + BUILD_WAIT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process held {folder / 'lock'} for {BUILD_WAIT_S:.0f} s") from None
                time.sleep(0.2)
        if not library.is_file():
            return _build(name, folder, library)
    spec = importlib.util.spec_from_file_location(name, library)
    assert spec is not None and spec.loader is not None  # a .so path always has a spec and a loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu() -> str:
    """This CPU's model name and feature flags (Linux), what -march=native builds for."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _build(name: str, folder: Path, library: Path) -> ModuleType:
    """Build into a fresh folder and load from there, then move a copy of the library into place: never a
    half-written one in the cache."""
    from torch.utils.cpp_extension import load_inline

    work = Path(tempfile.mkdtemp(prefix="build-", dir=folder))
    try:
        module = load_inline(
            name,
            cpp_sources=_SOURCE,
            functions=["products", "tangent", "update"],
            extra_cflags=list(_FLAGS),
            build_directory=str(work),
            verbose=False,
        )
        staged = folder / f".{name}.so.{os.getpid()}"
        shutil.copyfile(work / f"{name}.so", staged)
        os.replace(staged, library)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return module
