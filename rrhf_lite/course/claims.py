"""What a lesson says about its own run, checked where the numbers are computed.

A lesson's prose is written against one run. When code, settings or a machine change the numbers, a sentence such as
"the gold reward rises, then falls" can become false without anything failing. So every sentence of a lesson that
states a result of the run is paired with a check in the cell that computes the numbers it rests on:

    check("RRHF raises the gold reward over SFT", gain.lo > 0, f"paired difference {gain}")

prints the claim with its evidence when the run shows it, and raises :class:`ClaimNotShown` (an ``AssertionError``, so
``make test`` fails) when it does not, quoting the claim and the numbers. Comparisons are paired differences on the
same held-out prompts (:func:`paired`), and a difference counts only when its interval excludes 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from rrhf_lite.methods.evaluate import paired_difference, prompt_means


class ClaimNotShown(AssertionError):
    """A sentence of a lesson that this run does not support."""


def check(claim: str, holds: bool, evidence: str) -> None:
    """Print ``claim`` with its ``evidence`` if ``holds``; otherwise raise :class:`ClaimNotShown` naming both."""
    if not holds:
        raise ClaimNotShown(f"the lesson says: {claim}\nthis run shows: {evidence}")
    print(f"✓ {claim}: {evidence}")


@dataclass(frozen=True)
class Difference:
    """A mean difference between two things measured on the same held-out prompts, with its 95% interval."""

    mean: float
    lo: float
    hi: float
    prompts: int

    @property
    def positive(self) -> bool:
        """The interval lies above 0: a rise (or a gain) this evaluation can tell from noise."""
        return self.lo > 0

    @property
    def negative(self) -> bool:
        """The interval lies below 0."""
        return self.hi < 0

    @property
    def shown(self) -> bool:
        """The interval excludes 0 (a difference whose interval contains 0 is not a finding)."""
        return self.positive or self.negative

    def __str__(self) -> str:
        return f"{self.mean:+.2f} [{self.lo:+.2f}, {self.hi:+.2f}] over {self.prompts} prompts"


def paired(a, b, replies_per_prompt: int = 1) -> Difference:
    """``a - b`` on the same held-out prompts (values per reply in evaluation order, ``replies_per_prompt`` per
    prompt; :func:`~rrhf_lite.methods.evaluate.paired_difference`), as a :class:`Difference`."""
    mean, lo, hi = paired_difference(a, b, replies_per_prompt)
    return Difference(mean, lo, hi, len(prompt_means(a, replies_per_prompt)))
