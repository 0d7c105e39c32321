"""Learning-rate schedules: warm-up then cosine / one-cycle / step, by exact values."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from training.schedules import Schedule, apply_lr, build_schedule


def test_warmup_then_cosine_values() -> None:
    s = Schedule(
        "cosine", total_steps=14, warmup_steps=4, warmup_start_factor=0.2, final_factor=0.1
    )
    values = s.values()
    # Linear warm-up: 0.2, 0.4, 0.6, 0.8, then the cosine starts at exactly 1.
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert values[4] == pytest.approx(1.0)
    for i in range(10):
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / 9))
        assert values[4 + i] == pytest.approx(expected)
    assert values[-1] == pytest.approx(0.1)
    decay = values[4:]
    assert all(a > b for a, b in itertools.pairwise(decay))


def test_onecycle_is_linear_after_warmup() -> None:
    values = Schedule("onecycle", total_steps=6, warmup_steps=1, warmup_start_factor=0.5).values()
    assert values == pytest.approx([0.5, 1.0, 0.75, 0.5, 0.25, 0.0])


def test_step_schedule_multiplies_at_milestones() -> None:
    s = build_schedule("step", epochs=4, steps_per_epoch=10, milestone_epochs=(2, 3), gamma=0.5)
    assert s.milestones == (20, 30)
    assert [s.factor(i) for i in (0, 19, 20, 29, 30, 39)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_build_schedule_converts_epochs_to_steps() -> None:
    s = build_schedule("cosine", epochs=3, steps_per_epoch=7, warmup_epochs=1.0)
    assert (s.total_steps, s.warmup_steps) == (21, 7)
    assert build_schedule("constant", epochs=1, steps_per_epoch=5).values() == [1.0] * 5


def test_unknown_kind_rejected() -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        Schedule("linear", total_steps=3)


def test_apply_lr_scales_each_group_base_lr() -> None:
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=1.0)
    opt.param_groups[0]["base_lr"] = 0.2
    opt.param_groups[1]["base_lr"] = 0.4
    assert apply_lr(opt, 0.5) == pytest.approx(0.1)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.2)
