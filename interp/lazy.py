"""Names a package exports but imports on first use (``import interp`` and the ``interp``
command stay fast)."""

from __future__ import annotations

from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str], namespace: dict):
    """``__getattr__`` and ``__dir__`` for ``package``: each name of ``exports`` is read from
    the module named beside it when first asked for, then kept in ``namespace``."""
    def __getattr__(name: str):
        if name in exports:
            value = getattr(import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(namespace.get("__all__", exports))

    return __getattr__, __dir__
