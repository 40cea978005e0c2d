"""ngpt_ds: a DeepSpeed trainer for nGPT, the Normalized Transformer (arXiv 2410.01131)."""

__version__ = "0.1.0"


class _RegisterWhenTransformersIsImported:
    """Registers nGPT and the GPT baseline with transformers' Auto classes (ngpt_ds.hf) right after
    `transformers` is imported, so that `import ngpt_ds` never imports transformers itself (seconds)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformers":
            return None
        import importlib.util

        _sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader:
    """transformers' own loader, then the registration."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _register_with_transformers()

    def __getattr__(self, name):
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
