"""The options every ``interp`` subcommand shares, and the one parser of each kind of value.

Kept free of heavy imports: ``interp --help`` and a usage error must answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from interp.errors import ConfigError

DEVICE_HELP = "cpu, cuda, cuda:1, mps (default: cuda if present, else cpu)"  # as models.py


def comma_list(kind=str, name: str = "value"):
    """An argparse type: a comma-separated list of ``kind`` (at least one)."""
    def parse(text: str):
        items = [v.strip() for v in str(text).split(",") if v.strip()]
        try:
            values = [kind(v) for v in items]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} {name}s, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one {name}")
        return values
    parse.__name__ = f"{kind.__name__}_list"
    return parse


#: the largest count any option takes: a larger request would not fit this machine's memory
MAX_COUNT = 1_000_000


def _number(text: str, kind):
    """``text`` as a ``kind``; a count (int) above :data:`MAX_COUNT` is refused."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
    if kind is int and value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_COUNT:,} (a larger request would "
                                         f"not fit in memory), got {text}")
    return value


def at_least(minimum: float, kind=int):
    """An argparse type: a number >= ``minimum`` (impossible values are refused, not coerced)."""
    def parse(text: str):
        value = _number(text, kind)
        if value != value or value < minimum:   # NaN or too small
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def positive(kind=int):
    """An argparse type: a number > 0."""
    def parse(text: str):
        value = _number(text, kind)
        if value != value or value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def knobs(pairs: list[str] | None) -> dict:
    """``--knob key=value`` pairs (values parsed as JSON when they are JSON)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--knob takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out[key.strip()] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def add_common(p: argparse.ArgumentParser) -> None:
    """``--quiet`` and ``--debug``, accepted after the subcommand too."""
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bars")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback of an unexpected error")


def add_model(p: argparse.ArgumentParser, default: str | None = "smollm2-135m") -> None:
    p.add_argument("--model", default=default,
                   help="model spec: smollm2-135m, gemma3-270m, tiny-random-llama, a directory, "
                        "a .gguf file or a HF id (default: smollm2-135m)")
    add_device(p)


def add_task_or_file(p: argparse.ArgumentParser, task_help: str, flag: str, file_help: str
                     ) -> None:
    """``--task`` (generated items) or ``flag`` (a JSONL file of the user's): exactly one."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help=task_help)
    src.add_argument(flag, help=file_help)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="model dtype (default: bfloat16 on CUDA, float32 on CPU)")


def _options(cls, skip=()):
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata and f.name not in skip]


def add_settings(parser, cls, defaults=None, skip=()) -> None:
    """One option per field of dataclass ``cls`` that carries option metadata (``help``,
    ``flag``, ``argparse``; see :func:`interp.shift.config.setting`), in field order, but those
    in ``skip``; ``defaults`` (an instance of ``cls``) replaces the fields' own defaults."""
    for f in _options(cls, skip):
        meta = f.metadata
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        default = f.default if defaults is None else getattr(defaults, f.name)
        default = list(default) if isinstance(default, tuple) else default
        parser.add_argument(flag, dest=f.name, default=default, help=meta["help"],
                            **meta["argparse"])


def settings_from(args, cls, skip=()) -> dict:
    """The values of :func:`add_settings`' options, as ``cls``'s keyword arguments."""
    return {f.name: tuple(v) if isinstance(f.default, tuple) else v
            for f in _options(cls, skip) for v in [getattr(args, f.name)]}


def sweep_keys(cls) -> dict[str, type]:
    """The fields of ``cls`` a sweep config may set, with the type of their values."""
    return {f.name: f.metadata["kind"] for f in dataclasses.fields(cls)
            if f.metadata.get("sweep")}
