"""The verdict of a shift experiment, by rules fixed here before any run.

The primary contrast is ``effects["icl_minus_ft"]``: (shift(base-icl) - shift(its sham)) -
(shift(ft-zs) - shift(its sham)). Rules, checked in this order:

1. ``undefined``: a gate leaves the primary contrast undefined -> ``inconclusive``;
2. ``icl_more``: its interval lies above 0 and the secondary contrast (shuffled shams), where
   defined, has a positive estimate -> ``icl_more``;
3. ``ft_more``: its interval lies below 0 and the secondary, where defined, is negative ->
   ``ft_more``;
4. ``equivalent``: its interval lies within +-margin -> ``no_difference``;
5. ``otherwise`` -> ``inconclusive`` (an interval above / below 0 whose secondary disagrees
   falls here too).

The sentence states the minimum detectable difference: the half-width of the interval.
"""

from __future__ import annotations

RULES = {
    "undefined": ("inconclusive", "the primary contrast is undefined"),
    "icl_more": ("icl_more", "the primary icl - ft interval lies above 0 and the secondary "
                             "contrast, where defined, agrees in sign"),
    "ft_more": ("ft_more", "the primary icl - ft interval lies below 0 and the secondary "
                           "contrast, where defined, agrees in sign"),
    "equivalent": ("no_difference", "the primary interval lies within the equivalence margin"),
    "otherwise": ("inconclusive", "the primary interval neither excludes 0 with agreement of the "
                                  "secondary contrast nor lies within the margin"),
}


def decide(primary: dict, secondary: dict | None, margin: float) -> tuple[str, str]:
    """(verdict code, name of the rule that fired)."""
    if primary.get("estimate") is None or primary.get("ci95") is None:
        return RULES["undefined"][0], "undefined"
    lo, hi = primary["ci95"]
    sec = secondary.get("estimate") if secondary else None
    if lo > 0 and (sec is None or sec > 0):
        return RULES["icl_more"][0], "icl_more"
    if hi < 0 and (sec is None or sec < 0):
        return RULES["ft_more"][0], "ft_more"
    if -margin <= lo and hi <= margin:
        return RULES["equivalent"][0], "equivalent"
    return RULES["otherwise"][0], "otherwise"


def sentence(code: str, rule: str, primary: dict, secondary: dict | None, margin: float) -> str:
    """The verdict in words, with the rule and the minimum detectable difference."""
    if rule == "undefined":
        return (f"Inconclusive: the primary contrast (ICL's shift beyond its sham minus FT's "
                f"shift beyond its sham) is undefined ({primary.get('reason')}). Rule fired: "
                f"{rule}.")
    lo, hi = primary["ci95"]
    mdd = (hi - lo) / 2
    sec = ""
    if secondary and secondary.get("estimate") is not None:
        sec = f"; secondary contrast (shuffled shams) {secondary['estimate']:+.3f}"
    head = (f"ICL's shift beyond its sham minus FT's shift beyond its sham = "
            f"{primary['estimate']:+.3f} [{lo:+.3f}, {hi:+.3f}]{sec}. Minimum detectable "
            f"difference (interval half-width) {mdd:.3f}; equivalence margin {margin:g}. ")
    words = {
        "icl_more": "ICL shifted the circuit more than fine-tuning did, beyond what its sham "
                    "shifts.",
        "ft_more": "Fine-tuning shifted the circuit more than ICL did, beyond what its sham "
                   "shifts.",
        "equivalent": "ICL and fine-tuning shifted the circuit equally, within the margin.",
        "otherwise": "Inconclusive: the data cannot tell which shifts the circuit more.",
    }
    return head + words[rule] + f" Rule fired: {rule} ({RULES[rule][1]})."
