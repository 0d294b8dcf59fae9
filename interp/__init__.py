"""interp: why in-context learning beats fine-tuning, measured on real models."""

__version__ = "0.1.0"

from interp.errors import InterpError  # noqa: E402

__all__ = ["__version__", "InterpError", "load_model", "generate", "evaluate"]


def __getattr__(name):  # lazy re-exports keep `import interp` and `interp --help` fast
    if name == "load_model":
        from interp.models import load_model
        return load_model
    if name == "generate":
        from interp.tasks import generate
        return generate
    if name == "evaluate":
        from interp.evaluate import evaluate
        return evaluate
    raise AttributeError(name)
