"""How an interval becomes a verdict, and a finding's claims one verdict.

A claim is a rule fixed before any number is seen: an effect (one number, oriented so
that the claim says where it lies), a 95% interval for it, and a bound, the smallest
effect that counts as support. The verdict follows from the interval alone:

  reproduced    the whole interval lies on the claim's side of the bound
  refuted       the whole interval lies on the other side
  inconclusive  the interval contains the bound, or the data to compute it are missing

Noise cannot decide a verdict: it widens the interval until the verdict is
inconclusive. A finding made of several claims ("A; B") is reproduced when every
part is, refuted when any part is, inconclusive otherwise; its effect and interval
are those of the part that decided. Missing data make a part inconclusive (effect and
interval empty, its detail says what is missing): no fourth verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REPRODUCED, REFUTED, INCONCLUSIVE = "reproduced", "refuted", "inconclusive"


def verdict(low: float, high: float, bound: float, above: bool = True) -> str:
    """The verdict of an interval for a claim that the effect lies above (or below) `bound`."""
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    supports, contradicts = (low > bound, high < bound) if above else (high < bound, low > bound)
    return REPRODUCED if supports else REFUTED if contradicts else INCONCLUSIVE


def fmt(value: float) -> str:
    """Three significant digits: how every effect, bound and interval is quoted."""
    return f"{value:.3g}"


@dataclass(frozen=True)
class Part:
    """One claim of a finding: the rule (measure, side, bound) first, then the numbers."""

    measure: str
    above: bool  # the claim puts the effect above the bound (else below)
    bound: float
    study: str
    effect: float = math.nan
    low: float = math.nan
    high: float = math.nan
    detail: str = ""  # the numbers behind the effect, or what is missing

    @property
    def rule(self) -> str:
        return f"{self.measure} {'>' if self.above else '<'} {fmt(self.bound)}"

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high, self.bound, self.above)

    def describe(self) -> str:
        if math.isnan(self.effect):
            return f"{self.rule}: {INCONCLUSIVE}, {self.detail}"
        numbers = f"{fmt(self.effect)} [{fmt(self.low)}, {fmt(self.high)}]"
        return f"{self.rule}: {self.verdict}, {numbers} ({self.study}: {self.detail})"


@dataclass(frozen=True)
class Finding:
    number: int
    claim: str
    evidence: str
    verdict: str
    effect: float = math.nan  # of the part that decided the verdict
    low: float = math.nan
    high: float = math.nan
    study: str = ""  # the spaces (and models) the evidence came from
    rule: str = ""  # the deciding part's effect and bound


def decide(number: int, claim: str, parts: list[Part]) -> Finding:
    """All parts reproduced: reproduced; any refuted: refuted; else inconclusive. The deciding part gives the effect."""
    verdicts = [part.verdict for part in parts]
    decided = REFUTED if REFUTED in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else REPRODUCED
    deciding = parts[verdicts.index(decided)] if decided != REPRODUCED else parts[0]
    lines = [part.describe() for part in parts]
    evidence = lines[0] if len(parts) == 1 else "; ".join(f"({chr(97 + i)}) {line}" for i, line in enumerate(lines))
    studies = ", ".join(dict.fromkeys(part.study for part in parts))
    return Finding(
        number, claim, evidence, decided, deciding.effect, deciding.low, deciding.high, studies, deciding.rule
    )
