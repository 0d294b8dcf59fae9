"""The verdict of a shift experiment, by rules fixed here before any run. The run, the study's
``icl_shifts_more`` claim and ``interp compare`` all use :func:`decide`.

The primary contrast is ``effects["icl_minus_ft"]``: (shift(base-icl) - shift(its sham)) -
(shift(ft-zs) - shift(its sham)); the secondary is the same with the shuffled shams. The margin
is the smallest difference that counts (minimal-effect semantics). Rules, checked in order:

1. ``undefined``: a gate leaves the primary contrast undefined -> ``inconclusive``;
2. ``icl_more``: the primary interval lies above +margin and the secondary estimate is
   positive -> ``icl_more``;
3. ``ft_more``: the primary interval lies below -margin and the secondary estimate is
   negative -> ``ft_more``;
4. ``secondary_undefined``: the primary interval excludes 0 but the secondary is undefined (a
   sham failed its gate) -> ``inconclusive``: an undefined secondary never counts as agreement;
5. ``secondary_disagrees``: the primary interval excludes 0, but the secondary has the other
   sign (or 0) -> ``inconclusive``;
6. ``icl_positive_below_margin``: the interval lies above 0 but not above the margin, and the
   secondary is positive -> ``icl_positive_below_margin`` (a difference, not shown to matter);
7. ``ft_negative_below_margin``: the mirror -> ``ft_negative_below_margin``;
8. ``equivalent``: the interval lies within +-margin -> ``no_difference``;
9. ``otherwise`` -> ``inconclusive``.

The sentence states the minimum detectable difference at 80 % power for a two-sided 5 % test,
(1.96 + 0.84) x the standard error, about 1.43 x the interval's half-width.
"""

from __future__ import annotations

RULES = {
    "undefined": ("inconclusive", "the primary contrast is undefined"),
    "icl_more": ("icl_more", "the primary icl - ft interval lies above +margin and the "
                             "secondary contrast's estimate is positive"),
    "ft_more": ("ft_more", "the primary icl - ft interval lies below -margin and the secondary "
                           "contrast's estimate is negative"),
    "secondary_undefined": ("inconclusive", "the primary interval excludes 0 but the secondary "
                                            "contrast is undefined"),
    "secondary_disagrees": ("inconclusive", "the primary interval excludes 0 but the secondary "
                                            "contrast has the other sign"),
    "icl_positive_below_margin": ("icl_positive_below_margin",
                                  "the primary interval lies above 0 but not above +margin, and "
                                  "the secondary contrast's estimate is positive"),
    "ft_negative_below_margin": ("ft_negative_below_margin",
                                 "the primary interval lies below 0 but not below -margin, and "
                                 "the secondary contrast's estimate is negative"),
    "equivalent": ("no_difference", "the primary interval lies within the equivalence margin"),
    "otherwise": ("inconclusive", "the primary interval neither excludes 0 nor lies within the "
                                  "margin"),
}
DIRECTIONAL = ("icl_more", "ft_more")
MDD_FACTOR = 1.96 + 0.8416   # minimum detectable difference / standard error (80 % power)


def decide(primary: dict, secondary: dict | None, margin: float) -> tuple[str, str]:
    """(verdict code, name of the rule that fired)."""
    if primary.get("estimate") is None or primary.get("ci95") is None:
        return RULES["undefined"][0], "undefined"
    lo, hi = primary["ci95"]
    sec = secondary.get("estimate") if secondary else None
    for sign, beyond, rule, below in ((1, lo > margin, "icl_more", "icl_positive_below_margin"),
                                      (-1, hi < -margin, "ft_more", "ft_negative_below_margin")):
        if sign * (lo if sign > 0 else hi) > 0:       # the interval excludes 0 on this side
            if sec is None:
                rule = "secondary_undefined"
            elif not sec * sign > 0:
                rule = "secondary_disagrees"
            elif not beyond:
                rule = below
            return RULES[rule][0], rule
    if -margin <= lo and hi <= margin:
        return RULES["equivalent"][0], "equivalent"
    return RULES["otherwise"][0], "otherwise"


def mdd(interval: dict) -> float | None:
    """Minimum detectable difference (80 % power, two-sided 5 %) of an interval's estimate."""
    se = interval.get("se")
    if se is None and interval.get("ci95") is not None:
        lo, hi = interval["ci95"]
        se = (hi - lo) / (2 * 1.96)
    return None if se is None else MDD_FACTOR * se


WORDS = {
    "icl_more": "ICL shifted the circuit more than fine-tuning did, beyond what its sham shifts, "
                "by more than the margin.",
    "ft_more": "Fine-tuning shifted the circuit more than ICL did, beyond what its sham shifts, "
               "by more than the margin.",
    "secondary_undefined": "Inconclusive: the primary contrast excludes 0, but the secondary "
                           "contrast that must agree is undefined.",
    "secondary_disagrees": "Inconclusive: the primary contrast excludes 0, but the secondary "
                           "contrast points the other way.",
    "icl_positive_below_margin": "ICL shifted the circuit more than fine-tuning did, but not "
                                 "demonstrably by more than the margin.",
    "ft_negative_below_margin": "Fine-tuning shifted the circuit more than ICL did, but not "
                                "demonstrably by more than the margin.",
    "equivalent": "ICL and fine-tuning shifted the circuit equally, within the margin.",
    "otherwise": "Inconclusive: the data cannot tell which shifts the circuit more.",
}


def sentence(code: str, rule: str, primary: dict, secondary: dict | None, margin: float) -> str:
    """The verdict in words, with the rule and the minimum detectable difference."""
    if rule == "undefined":
        return (f"Inconclusive: the primary contrast (ICL's shift beyond its sham minus FT's "
                f"shift beyond its sham) is undefined ({primary.get('reason')}). Rule fired: "
                f"{rule}.")
    lo, hi = primary["ci95"]
    sec = ""
    if secondary and secondary.get("estimate") is not None:
        sec = f"; secondary contrast (shuffled shams) {secondary['estimate']:+.3f}"
    head = (f"ICL's shift beyond its sham minus FT's shift beyond its sham = "
            f"{primary['estimate']:+.3f} [{lo:+.3f}, {hi:+.3f}]{sec}. Minimum detectable "
            f"difference (80 % power) {mdd(primary):.3f}; margin {margin:g}. ")
    return head + WORDS[rule] + f" Rule fired: {rule} ({RULES[rule][1]})."
