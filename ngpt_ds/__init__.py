"""ngpt_ds: a DeepSpeed trainer for nGPT, the Normalized Transformer (arXiv 2410.01131)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType

__version__ = "0.1.0"


class _RegisterWhenTransformersIsImported:
    """Registers nGPT and the GPT baseline with transformers' Auto classes (ngpt_ds.hf) right after
    `transformers` is imported, so that `import ngpt_ds` never imports transformers itself (seconds).

    It stays in sys.meta_path until transformers has been executed: a probe such as
    `importlib.util.find_spec("transformers")` (lm_eval's and accelerate's "is it installed?") finds the
    spec without importing it, and the import that follows must still be the one that registers."""

    def __init__(self) -> None:
        import threading

        self._finding = threading.local()  # find_spec below asks the other finders, not itself again

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != "transformers" or getattr(self._finding, "active", False):
            return None
        import importlib.util

        self._finding.active = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding.active = False
        if spec is not None and spec.loader is not None:
            spec.loader = cast("Loader", _RegisteringLoader(spec.loader))  # a Loader by duck typing
        return spec


class _RegisteringLoader:
    """transformers' own loader, then the registration."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _sys.meta_path[:] = [f for f in _sys.meta_path if not isinstance(f, _RegisterWhenTransformersIsImported)]
        _register_with_transformers()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def _register_with_transformers() -> None:
    try:
        import ngpt_ds.hf  # noqa: F401  (registers on import)
    except Exception as err:  # an unsupported transformers: ngpt_ds itself still works
        import warnings

        warnings.warn(f"ngpt_ds models are not registered with transformers: {type(err).__name__}: {err}", stacklevel=2)


import sys as _sys  # noqa: E402

if "transformers" in _sys.modules:
    _register_with_transformers()
elif not any(isinstance(f, _RegisterWhenTransformersIsImported) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _RegisterWhenTransformersIsImported())
