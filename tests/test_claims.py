"""A lesson's claims about its run: printed with their evidence when the run shows them, an error otherwise."""

import pytest
import torch

from rrhf_lite.course.claims import ClaimNotShown, Difference, check, paired


def test_a_claim_the_run_shows_is_printed_with_its_evidence(capsys):
    check("the gold reward rises", True, "+0.30 [+0.10, +0.50]")
    assert capsys.readouterr().out == "✓ the gold reward rises: +0.30 [+0.10, +0.50]\n"


def test_a_claim_the_run_does_not_show_fails_quoting_claim_and_numbers():
    with pytest.raises(ClaimNotShown, match=r"(?s)the lesson says: the gold reward rises.*this run shows: -0.1"):
        check("the gold reward rises", False, "-0.1")
    assert issubclass(ClaimNotShown, AssertionError)  # so that make test fails on it


def test_a_difference_counts_only_when_its_interval_excludes_zero():
    assert Difference(0.2, 0.05, 0.35, 200).positive and not Difference(0.2, -0.05, 0.45, 200).shown
    assert Difference(-0.2, -0.35, -0.05, 200).negative
    assert str(Difference(0.2, 0.05, 0.35, 200)) == "+0.20 [+0.05, +0.35] over 200 prompts"


def test_paired_counts_distinct_prompts():
    a, b = torch.arange(6.0), torch.zeros(6)  # 3 prompts, 2 replies each (prompts repeat in evaluation order)
    diff = paired(a, b, replies_per_prompt=2)
    assert diff.prompts == 3 and diff.mean == pytest.approx(2.5)
