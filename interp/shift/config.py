"""Settings of the circuit-shift experiment and the names it uses.

Conditions (keys of ``results.json["conditions"]``; the table is ``shift/table.py``), all scored
on the same test queries and counterfactual pairs:

- ``base-zs``: the base model, zero-shot; ``base-icl``: the base model with k demonstrations;
  ``ft-zs``: the fine-tuned model, zero-shot;
- ICL shams (change the input as ICL does, without the task's information), at matched prompt
  length: ``base-icl-other-task`` (demonstrations of another family, same answer set where one
  exists) and ``base-icl-shuffled`` (the same demonstrations, half of the answers wrong);
- fine-tuning shams (change the weights as fine-tuning does), same recipe, steps and seed:
  ``ft-other-task`` (trained on another family), ``ft-shuffled`` (trained on shuffled labels)
  and ``ft-random-delta`` (a random update with ft-zs's per-matrix norms).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from interp.errors import ConfigError, TaskError
from interp.options import at_least, comma_list, positive
from interp.shift.table import TABLE, Shams
from interp.tasks import TASKS, get_task

#: the conditions and their groups, all read from the one table (``shift/table.py``)
CONDITIONS = tuple(spec.name for spec in TABLE)
ICL_CONDITIONS = tuple(spec.name for spec in TABLE if spec.arm == "icl")
FT_CONDITIONS = tuple(spec.name for spec in TABLE if spec.arm == "ft")
TRAINED = tuple(spec.name for spec in TABLE if spec.trained)   # with a fine-tuning run
#: each real condition's shams: (primary, secondary, fallback when the secondary is undefined)
SHAMS: dict[str, Shams] = {spec.name: spec.shams for spec in TABLE if spec.shams}
#: each family's other-task partner (declared on the family: ``TaskFamily.other_task``; same
#: answer set where one exists: boolean <-> relation share True/False, expression <-> code share
#: numbers; parity's even/odd has no partner, so it borrows boolean's)
OTHER_TASK = {name: get_task(name).other_task for name in TASKS}
#: the version of how conditions are built (demonstrations, shams, updates, tasks): stages
#: computed under another are stale (recomputed with ``--force``, else refused)
DESIGN = 2
#: the version of ft-random-delta's random frames (2: one generator per matrix from a digest of
#: seed and name): the stages that measure it are stale under another; fine-tuning runs are not
RANDOM_UPDATE = 2
GAP_GATE = 0.1                 # a condition's clean-corrupt gap interval must lie above this
#                                (logits: a 0.01-logit gap is no behaviour to explain)
RELIABILITY_GATE = 0.7         # ... and its map's reliability at least this (attenuation <= 1.43)
EQUIVALENCE_MARGIN = 0.05
DOSE_FRACTIONS = (0.25, 0.5, 1.0)
#: the largest sizes a run accepts (per-pair maps of every condition are held in memory)
LIMITS = {"n_pairs": 4096, "n_eval": 100_000, "n_train": 1_000_000, "n_boot": 100_000,
          "shots": 512, "demo_seeds": 100, "ft_seeds": 100, "n_random_sets": 10_000,
          "epochs": 1000}


def other_task_of(task: str) -> str:
    """The family whose data the other-task shams of ``task`` use (a :class:`TaskError` when
    the family declares none)."""
    partner = get_task(task).other_task
    if partner is None:
        raise TaskError(f"task {task!r} declares no other_task, so its other-task shams cannot be "
                        "built; set other_task on its family (a family with the same answers)")
    get_task(partner)
    return partner


def setting(default, help: str, *, flag: str | None = None, sweep: bool = True, kind=int,
            **argparse):
    """A :class:`ShiftConfig` field that is also an option: ``interp shift``'s flag (``flag``,
    else ``--name-with-dashes``, parsed with ``argparse``'s keywords) and, with ``sweep``, a key
    of a sweep config's ``shift:`` section (values of type ``kind``). Adding an option is adding
    a field here."""
    return field(default=default, metadata={"help": help, "flag": flag, "sweep": sweep,
                                            "kind": kind, "argparse": argparse})


@dataclass
class ShiftConfig:
    model: str = "smollm2-135m"
    task: str = setting("boolean", "task family", sweep=False, kind=str)
    shots: int = setting(4, "demonstrations for base-icl (kept under --quick: the shuffled sham "
                            "needs a multiple of 4 for exactly half wrong)", type=positive())
    n_train: int = setting(128, "fine-tuning samples for ft-zs (and each fine-tuning sham)",
                           type=positive())
    ft_method: str = setting("lora", "fine-tuning method", kind=str, choices=("lora", "full"))
    epochs: int = setting(1, "fine-tuning epochs", type=positive())
    lr: float | None = setting(None, "fine-tuning learning rate (default: the method's)",
                               kind=float, type=positive(float))
    n_eval: int = setting(64, "test queries per accuracy cell", type=positive())
    n_pairs: int = setting(16, "counterfactual pairs per map (twice as many are scored: the "
                               "second half measures the noise floor)", type=at_least(4))
    dose_shots: tuple[int, ...] = setting(
        (1, 2, 4, 8, 16), "ICL doses for the dose-response (base-icl's shots always included)",
        type=comma_list(int, "shot count"))
    demo_seeds: int = setting(1, "demonstration sets (hierarchical bootstrap when > 1)",
                              type=positive())
    ft_seeds: int = setting(1, "fine-tuning seeds (hierarchical bootstrap when > 1)",
                            type=positive())
    n_boot: int = setting(500, "bootstrap resamples", type=positive())
    n_splits: int = 20
    margin: float = setting(EQUIVALENCE_MARGIN, "equivalence margin of the verdict (distance "
                                                "units)", kind=float, type=at_least(0.0, float))
    ks: tuple[int, ...] = (5, 10, 20)
    seed: int = setting(0, "seed of every random choice", sweep=False, type=int)
    probes: bool = setting(True, "skip faithfulness, logit lens, attention views and ICL heads",
                           flag="--no-probes", kind=bool, action="store_false")
    causal: bool = setting(False, "also necessity / sufficiency tests of the most shifted "
                                  "components", kind=bool, action="store_true")
    n_random_sets: int = 50
    device: str | None = None
    dtype: str | None = None
    out: str = setting("runs/shift", "output directory (resumable)", sweep=False, kind=str)
    quick: bool = setting(False, "smallest settings that still run every stage (smoke test)",
                          kind=bool, action="store_true")
    force: bool = setting(False, "recompute stages computed with other settings instead of "
                                 "stopping", sweep=False, kind=bool, action="store_true")
    progress: bool = True
    knobs: dict = field(default_factory=dict)

    def __post_init__(self):
        family = get_task(self.task)
        family.resolve_knobs(self.knobs)
        other_task_of(self.task)        # the other-task shams need a partner family
        for name in ("shots", "n_train", "n_eval", "n_pairs", "n_boot", "epochs", "demo_seeds",
                     "ft_seeds", "n_splits", "n_random_sets"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name, most in LIMITS.items():
            if getattr(self, name) > most:
                raise ConfigError(f"{name} must be at most {most:,} (a larger request would not "
                                  f"fit this machine's memory or time), got {getattr(self, name)}")
        if self.n_pairs < 4:
            raise ConfigError(f"n_pairs must be >= 4 (split-half reliability), got {self.n_pairs}")
        if self.ft_method not in ("full", "lora"):
            raise ConfigError(f"ft_method must be full or lora, got {self.ft_method!r}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.margin < 1:
            raise ConfigError(f"margin must be in [0, 1), got {self.margin}")
        self.ks = tuple(int(k) for k in self.ks)
        self.dose_shots = tuple(sorted(set(int(k) for k in self.dose_shots) | {self.shots}))
        if len(self.dose_shots) < 3 or min(self.dose_shots) < 1:
            raise ConfigError("dose_shots needs at least 3 positive shot counts")

    def resolved(self) -> ShiftConfig:
        """The sizes a run uses: under ``quick``, the smallest that still run every stage (a
        new config; this one is left as the user gave it), else this config itself. The shot
        count is kept (the shuffled sham needs a multiple of 4)."""
        if not self.quick:
            return self
        return replace(self, n_train=32, n_eval=8, n_pairs=6,
                       n_boot=100, epochs=1, ks=(3, 5), dose_shots=(1, 2, 4),
                       n_random_sets=min(self.n_random_sets, 8))

    @property
    def other_task(self) -> str:
        return other_task_of(self.task)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> ShiftConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown shift setting {unknown[0]!r}")
        return cls(**values)

    # --- what each stage depends on (its fingerprint settings) -----------------------------

    def _base(self) -> dict:
        return {"model": self.model, "task": self.task, "seed": self.seed, "knobs": self.knobs,
                "dtype": self.dtype, "design": DESIGN}

    def ft_settings(self, condition: str, ft_seed: int) -> dict:
        return {**self._base(), "condition": condition, "ft_seed": ft_seed,
                "n_train": self.n_train, "ft_method": self.ft_method, "epochs": self.epochs,
                "lr": self.lr, "fractions": list(DOSE_FRACTIONS),
                "other_task": self.other_task if condition == "ft-other-task" else None}

    def accuracy_settings(self) -> dict:
        return {**self._base(), "shots": self.shots, "n_eval": self.n_eval,
                "n_train": self.n_train, "ft_method": self.ft_method, "epochs": self.epochs,
                "lr": self.lr, "demo_seeds": self.demo_seeds, "ft_seeds": self.ft_seeds,
                "random_update": RANDOM_UPDATE}

    def scores_settings(self) -> dict:
        return {**self.accuracy_settings(), "n_pairs": self.n_pairs, "n_eval": None}

    def dose_settings(self) -> dict:
        return {**self.scores_settings(), "dose_shots": list(self.dose_shots),
                "n_eval": self.n_eval, "shams": "the primary sham at every dose"}

    def probes_settings(self) -> dict:
        return {**self.scores_settings(), "ks": list(self.ks), "n_eval": self.n_eval,
                "faithfulness": "selected on set A, evaluated on set B"}

    def approximation_settings(self) -> dict:
        return {**self.scores_settings(), "check": "heads, 4 pairs, activation patching"}

    def causal_settings(self) -> dict:
        return {**self.scores_settings(), "ks": list(self.ks),
                "n_random_sets": self.n_random_sets}


def out_path(config: ShiftConfig) -> Path:
    return Path(config.out)


def study_template() -> ShiftConfig:
    """A study cell's settings before its model, task and directory (``interp study``'s
    defaults): causal tests on, five demonstration sets and five fine-tuning seeds, probes off,
    and seed 1, not 0 (the measurable settings were chosen on seed-0 pairs, so the study measures
    on fresh pairs, demonstrations and training data)."""
    return ShiftConfig(n_train=64, n_eval=32, demo_seeds=5, ft_seeds=5, probes=False,
                       causal=True, seed=1)
