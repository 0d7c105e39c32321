"""Optimiser parts: weight-decay groups, Lookahead, EMA, label smoothing wiring."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.ema import ModelEma
from training.engine import build_criterion
from training.lookahead import Lookahead
from training.optim import build_optimizer, split_decay_parameters
from training.recipes import get_recipe


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=True),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 2),
        nn.LayerNorm(2),
    )


def test_no_weight_decay_on_norm_and_bias_parameters() -> None:
    net = _net()
    decay, no_decay = split_decay_parameters(net)
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[id(p)] for p in decay) == ["0.weight", "4.weight"]
    assert sorted(names[id(p)] for p in no_decay) == [
        "0.bias",
        "1.bias",
        "1.weight",
        "4.bias",
        "5.bias",
        "5.weight",
    ]
    recipe = get_recipe("demo_fastnet").override(weight_decay=0.01, lr=0.3)
    opt, lookahead = build_optimizer(net, recipe)
    assert lookahead is None
    groups = sorted((g["weight_decay"], len(g["params"])) for g in opt.param_groups)
    # weights; normalisation parameters (1.*, 5.*); other biases (0.bias, 4.bias)
    assert groups == [(0.0, 2), (0.0, 4), (0.01, 2)]
    assert all(g["base_lr"] == 0.3 for g in opt.param_groups)


def test_frozen_parameters_are_left_out() -> None:
    net = _net()
    net[0].weight.requires_grad_(False)
    decay, no_decay = split_decay_parameters(net)
    assert all(p is not net[0].weight for p in decay + no_decay)


@pytest.mark.parametrize(
    ("name", "cls"),
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)],
)
def test_optimizer_kinds(name: str, cls: type) -> None:
    recipe = get_recipe("demo_fastnet").override(optimizer=name, momentum=0.8, lookahead_k=3)
    opt, lookahead = build_optimizer(_net(), recipe)
    assert isinstance(opt, cls)
    assert lookahead is not None and lookahead.k == 3
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] is True
    else:
        assert opt.param_groups[0]["betas"][0] == 0.8


def test_lookahead_updates_slow_weights_every_k_steps() -> None:
    w = nn.Parameter(torch.tensor([1.0]))
    inner = torch.optim.SGD([w], lr=1.0)
    la = Lookahead(inner, k=3, alpha=0.5)
    for step in range(1, 7):
        w.grad = torch.tensor([1.0])  # each fast step moves w by -1
        la.step()
        if step == 1:
            assert w.item() == pytest.approx(0.0)
            assert la.slow[0][0].item() == pytest.approx(1.0)  # slow untouched
        if step == 3:
            # fast reached -2; slow = 1 + 0.5 * (-2 - 1) = -0.5; fast reset to slow.
            assert la.slow[0][0].item() == pytest.approx(-0.5)
            assert w.item() == pytest.approx(-0.5)
    # Second cycle: fast -0.5 -> -3.5; slow = -0.5 + 0.5 * (-3.5 + 0.5) = -2.
    assert w.item() == pytest.approx(-2.0)


def test_lookahead_state_round_trip() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    la = Lookahead(torch.optim.SGD([w], lr=0.1, momentum=0.9), k=2)
    w.grad = torch.ones(2)
    la.step()
    state = la.state_dict()
    w2 = nn.Parameter(w.detach().clone())
    la2 = Lookahead(torch.optim.SGD([w2], lr=0.1, momentum=0.9), k=2)
    la2.load_state_dict(state)
    assert la2.fast_steps == 1
    assert torch.equal(la2.slow[0][0], torch.tensor([1.0, 2.0]))


def test_ema_math_with_warmup() -> None:
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = ModelEma(net, decay=0.9)
    expected = 0.0
    for t in range(30):
        with torch.no_grad():
            net.weight.fill_(float(t + 1))
        d = min(0.9, (1 + t) / (10 + t))
        assert ema.current_decay() == pytest.approx(d)
        ema.update(net)
        expected = d * expected + (1 - d) * (t + 1)
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-5)
    assert not ema.module.weight.requires_grad
    assert not ema.module.training


def test_ema_copies_integer_buffers() -> None:
    net = nn.BatchNorm1d(2)
    ema = ModelEma(net, decay=0.99)
    net.train()
    net(torch.randn(4, 2))
    ema.update(net)
    assert ema.module.num_batches_tracked.item() == 1
    assert not torch.equal(ema.module.running_mean, net.running_mean)  # averaged, not copied


def test_label_smoothing_reaches_the_criterion() -> None:
    recipe = get_recipe("demo_fastnet").override(label_smoothing=0.3)
    criterion = build_criterion(recipe)
    assert criterion.label_smoothing == 0.3
    logits = torch.tensor([[10.0, 0.0]])
    target = torch.tensor([0])
    plain = build_criterion(recipe.override(label_smoothing=0.0))
    assert criterion(logits, target).item() > plain(logits, target).item() + 1.0
