"""judge_star / headline on hand-made summaries (numbers chosen so each criterion's boundary is exercised)."""

import pytest

from star_merge.evaluation.verdict import Verdict, headline, judge_star


def summary(acc=0.70, nll=0.90, anchor_acc=0.70, anchor_nll=0.95, **extra):
    return {"star_test_accuracy": acc, "star_test_nll": nll, "mean_anchor_test_accuracy": anchor_acc,
            "mean_anchor_test_nll": anchor_nll, **extra}


def test_good_star_passes_both_criteria():
    v = judge_star(summary())
    assert isinstance(v, Verdict) and v.good and v.reasons == []
    assert v.text.startswith("star is a good solution") and "0.9000" in v.text and "0.9500" in v.text


def test_accuracy_within_one_point_is_allowed_but_not_beyond():
    assert judge_star(summary(acc=0.6905, anchor_acc=0.70)).good  # 0.95 pt below
    v = judge_star(summary(acc=0.6890, anchor_acc=0.70))  # 1.10 pts below
    assert not v.good and len(v.reasons) == 1
    assert "test accuracy 68.90%" in v.reasons[0] and "1.10 pts below" in v.reasons[0]
    assert v.text.startswith("star is NOT a good solution")


def test_nll_above_anchor_mean_fails_and_equal_passes():
    assert judge_star(summary(nll=0.95, anchor_nll=0.95)).good
    v = judge_star(summary(nll=1.256, anchor_nll=1.150))  # the over-fitted star of the old demo
    assert not v.good and v.reasons == ["test NLL 1.2560 is above the anchors' mean 1.1500"]


def test_both_criteria_failing_are_both_named():
    v = judge_star(summary(acc=0.60, nll=1.3))
    assert not v.good and len(v.reasons) == 2
    assert "accuracy" in v.reasons[0] and "NLL" in v.reasons[1]


def test_missing_numbers_never_judged_good():
    v = judge_star({"star_test_accuracy": 0.9, "mean_anchor_test_accuracy": 0.5})
    assert not v.good and v.reasons == ["test NLL of the star or of the anchors was not measured"]


def test_tolerance_is_configurable_and_checked():
    assert not judge_star(summary(acc=0.699, anchor_acc=0.70), accuracy_tolerance=0.0).good
    with pytest.raises(ValueError, match="accuracy_tolerance"):
        judge_star(summary(), accuracy_tolerance=-0.1)


def test_headline_puts_train_ratio_first_with_its_barriers():
    s = {
        "loss_barrier_ratio": {"train": 0.255 / 0.388, "test": 0.0019 / 0.0871},
        "star_vs_held_out": {"train_loss_barrier": {"mean": 0.255}, "test_loss_barrier": {"mean": 0.0019}},
        "anchor_vs_held_out": {"train_loss_barrier": {"mean": 0.388}, "test_loss_barrier": {"mean": 0.0871}},
    }
    line = headline(s)
    assert line.index("train-loss barrier ratio") < line.index("test-loss barrier ratio")
    assert "train-loss barrier ratio (paper's metric) 0.657 (0.2550 star ↔ held-out / 0.3880 anchor ↔ held-out)" in line
    assert "test-loss barrier ratio 0.022" in line
    assert headline({"loss_barrier_ratio": {"train": None, "test": None}}).count("–") == 2
