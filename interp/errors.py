"""Typed errors with one-line messages; the CLI maps every InterpError to exit code 2."""


class InterpError(Exception):
    """Base class for all errors raised deliberately by interp."""


class ModelSpecError(InterpError):
    """A model spec is unknown, malformed, or not available offline."""


class MissingDependencyError(InterpError):
    """An optional package needed for this operation is not installed."""


class TaskError(InterpError):
    """Unknown task, bad knob, or impossible request on a task (e.g. too many shots)."""


class ConfigError(InterpError):
    """A configuration value or file is malformed."""


class UnsupportedError(InterpError):
    """A model type lacks a capability (e.g. per-head attribution through a fused projection)."""


class StaleResultsError(InterpError):
    """A finished result in the output directory was computed with other settings."""


class TrainingError(InterpError):
    """Training cannot go on (for instance the loss stopped being finite)."""


class EngineCheckError(InterpError):
    """The fast engine disagrees with the plain forward (typically an unsupported library
    version): its numbers would be wrong."""


class DegenerateDataError(InterpError):
    """Measurements that cannot come from a model reading its input (no spread across pairs)."""


class DiskFullError(InterpError):
    """The disk filled up while a result was written (no partial file is left under its name)."""


class ContextLengthError(InterpError):
    """An input is longer than the model's context window (it is refused, never cut)."""


class ResourceError(InterpError):
    """A request would need more memory or time than this machine allows (checked before work)."""
