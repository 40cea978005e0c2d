"""The C++ source of Norm's loops (`norm_kernel`'s entry points run them) and their build, cache and load: built
with torch's extension builder (a C++ compiler and ninja; about 30 s of CPU time) once per machine, under one
file lock however many ranks start at once, cached under TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions in a
folder named by a hash of the source, flags, torch, Python and CPU.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

#: How long a process waits for another one's build of the loops before it goes on without them.
BUILD_WAIT_S = 600.0

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <cmath>
#include <vector>

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

// The sum of squares of one row in the order of torch's vectorized last-dim 2-norm (ReduceOpsKernel.cpp,
// norm_kernel_tensor_iterator_impl, on the fp32 copy `vector_norm(..., dtype=float32)` makes): W lanes of
// acc += v * v (a product, then a sum: no fused multiply-add), then lane 0 + lane 1 + ... left to right. n is a
// multiple of W (the caller checks), so torch's scalar tail never runs.
template <typename T, int W>
static inline float sum_squares(const T* __restrict__ x, int64_t n) {
  float acc[W];
  for (int j = 0; j < W; ++j) acc[j] = 0.0f;
  for (int64_t d = 0; d < n; d += W)
    for (int j = 0; j < W; ++j) {
      const float v = static_cast<float>(x[d + j]);
      acc[j] += v * v;
    }
  float s = acc[0];
  for (int j = 1; j < W; ++j) s = s + acc[j];
  return s;
}

// One row of Norm's forward: 1 / ||x|| in fp32 (sqrt, then the reciprocal), the factor rounded to T, and
// y = x * factor rounded to T, as `_L2Normalize.forward`'s operators make them.
template <typename T, int W>
static inline void normalize_row(const T* __restrict__ x, T* __restrict__ y, float* inv, T* factor, int64_t n) {
  const float i = 1.0f / std::sqrt(sum_squares<T, W>(x, n));
  const T f = static_cast<T>(i);
  *inv = i;
  *factor = f;
  const float ff = static_cast<float>(f);
  for (int64_t d = 0; d < n; ++d) y[d] = static_cast<T>(static_cast<float>(x[d]) * ff);
}

template <typename T, int W>
static void normalize_impl(const T* x, T* y, float* inv, T* factor, int64_t rows, int64_t n) {
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) normalize_row<T, W>(x + r * n, y + r * n, inv + r, factor + r, n);
  });
}

// Eq. 10-11's forward, `_BlockUpdate.forward` per row: target = Norm(x), m = lerp(h, target, alpha) rounded to
// T, y = Norm(m). lerp as torch's vectorized CPU kernel (LerpKernel.cpp, lerp_vec) computes it in fp32: where
// |alpha| < 0.5, fma(alpha, target - h, h), else fma(alpha - 1, target - h, target).
template <typename T, int W>
static void step_impl(const T* x, const T* h, const T* alpha, T* target, T* y, float* inv_x, T* factor_x,
                      float* inv_m, T* factor_m, int64_t rows, int64_t n) {
  std::vector<float> coeff(n);
  std::vector<char> small(n);
  for (int64_t i = 0; i < n; ++i) {
    const float a = static_cast<float>(alpha[i]);
    small[i] = std::abs(a) < 0.5f;
    coeff[i] = small[i] ? a : a - 1.0f;
  }
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<T> m(n);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t o = r * n;
      normalize_row<T, W>(x + o, target + o, inv_x + r, factor_x + r, n);
      for (int64_t i = 0; i < n; ++i) {
        const float start = static_cast<float>(h[o + i]), stop = static_cast<float>(target[o + i]);
        m[i] = static_cast<T>(std::fma(coeff[i], stop - start, small[i] ? start : stop));
      }
      normalize_row<T, W>(m.data(), y + o, inv_m + r, factor_m + r, n);
    }
  });
}

template <typename T>
static void normalize_dispatch(const T* x, T* y, float* inv, T* factor, int64_t rows, int64_t n, int64_t lanes) {
  if (lanes == 16)
    normalize_impl<T, 16>(x, y, inv, factor, rows, n);
  else
    normalize_impl<T, 8>(x, y, inv, factor, rows, n);
}

std::vector<torch::Tensor> normalize(torch::Tensor x, int64_t lanes) {
  TORCH_CHECK(lanes == 8 || lanes == 16, "lanes must be 8 or 16");
  auto y = torch::empty_like(x);
  auto row_shape = x.sizes().vec();
  row_shape.back() = 1;
  auto inv = torch::empty(row_shape, x.options().dtype(at::kFloat));
  auto factor = torch::empty(row_shape, x.options());
  const int64_t n = x.size(-1), rows = x.numel() / n;
  if (x.scalar_type() == at::kBFloat16)
    normalize_dispatch<c10::BFloat16>(x.data_ptr<c10::BFloat16>(), y.data_ptr<c10::BFloat16>(), inv.data_ptr<float>(),
                                      factor.data_ptr<c10::BFloat16>(), rows, n, lanes);
  else
    normalize_dispatch<float>(x.data_ptr<float>(), y.data_ptr<float>(), inv.data_ptr<float>(),
                              factor.data_ptr<float>(), rows, n, lanes);
  return {y, inv, factor};
}

template <typename T>
static void step_dispatch(const T* x, const T* h, const T* alpha, T* target, T* y, float* inv_x, T* factor_x,
                          float* inv_m, T* factor_m, int64_t rows, int64_t n, int64_t lanes) {
  if (lanes == 16)
    step_impl<T, 16>(x, h, alpha, target, y, inv_x, factor_x, inv_m, factor_m, rows, n);
  else
    step_impl<T, 8>(x, h, alpha, target, y, inv_x, factor_x, inv_m, factor_m, rows, n);
}

std::vector<torch::Tensor> step(torch::Tensor x, torch::Tensor h, torch::Tensor alpha, int64_t lanes) {
  TORCH_CHECK(lanes == 8 || lanes == 16, "lanes must be 8 or 16");
  auto target = torch::empty_like(x), y = torch::empty_like(x);
  auto row_shape = x.sizes().vec();
  row_shape.back() = 1;
  auto inv_x = torch::empty(row_shape, x.options().dtype(at::kFloat));
  auto inv_m = torch::empty(row_shape, x.options().dtype(at::kFloat));
  auto factor_x = torch::empty(row_shape, x.options()), factor_m = torch::empty(row_shape, x.options());
  const int64_t n = x.size(-1), rows = x.numel() / n;
  if (x.scalar_type() == at::kBFloat16)
    step_dispatch<c10::BFloat16>(x.data_ptr<c10::BFloat16>(), h.data_ptr<c10::BFloat16>(),
                                 alpha.data_ptr<c10::BFloat16>(), target.data_ptr<c10::BFloat16>(),
                                 y.data_ptr<c10::BFloat16>(), inv_x.data_ptr<float>(),
                                 factor_x.data_ptr<c10::BFloat16>(), inv_m.data_ptr<float>(),
                                 factor_m.data_ptr<c10::BFloat16>(), rows, n, lanes);
  else
    step_dispatch<float>(x.data_ptr<float>(), h.data_ptr<float>(), alpha.data_ptr<float>(), target.data_ptr<float>(),
                         y.data_ptr<float>(), inv_x.data_ptr<float>(), factor_x.data_ptr<float>(),
                         inv_m.data_ptr<float>(), factor_m.data_ptr<float>(), rows, n, lanes);
  return {target, y, inv_x, inv_m, factor_x, factor_m};
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


def cached() -> bool:
    """Whether this machine's cache holds the loops' build for this source, torch, Python and CPU."""
    name, folder = _place()
    return (folder / f"{name}.so").is_file()


_name: str | None = None


def _place() -> tuple[str, Path]:
    """The build's name (a hash of what it depends on, computed once) and its folder in the cache."""
    global _name
    if _name is None:
        key = "\0".join((_SOURCE, *_FLAGS, torch.__version__, sys.version, platform.machine(), _cpu()))
        _name = "ngpt_ds_norm_" + hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    return _name, root / _name


def load() -> ModuleType:
    """The loops' module from this machine's cache, built into it first where it lacks them (one process builds,
    the others wait up to BUILD_WAIT_S for its lock)."""
    name, folder = _place()
    library = folder / f"{name}.so"
    # A library in place is whole (_build puts it there with one rename), so loading it takes no lock and writes
    # nothing: the trainer's default load works from a read-only cache (a shared home, an image's layer).
    if not library.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        # flock, not a lock file: a process killed while building releases it, so no later one waits for ever
        # (torch's own build folder lock would); one build per machine however many ranks start at once.
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
            functions=["products", "tangent", "update", "normalize", "step"],
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
