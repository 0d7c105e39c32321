"""Muon: the orthogonalised filter step, the SGD step of the other groups, and the recipe wiring."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.fastnet import FastNet
from training.muon import Muon, orthogonalize
from training.optim import build_optimizer
from training.recipes import RecipeError, get_recipe


def _random(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(64, 576), (256, 2304), (300, 40)])
def test_orthogonalize_flattens_the_spectrum_and_keeps_the_singular_vectors(
    shape: tuple[int, int],
) -> None:
    g = _random(*shape)
    # A steep spectrum: the update must not follow it.
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    g = u @ torch.diag(torch.logspace(0, -2, len(s))) @ vh
    out = orthogonalize(g)
    assert out.shape == g.shape and out.dtype == g.dtype
    s_out = torch.linalg.svdvals(out)
    # Three quintic iterations pull the 100x spread of the input's singular values together
    # (not all the way: the smallest start far below the Frobenius norm it is scaled by).
    assert float(s_out.max()) < 1.6
    assert float(s_out.max() / s_out.min()) < 100 / 5
    assert float(s_out.median()) > 0.5
    # Same singular vectors: u^T out v is diagonal up to float error.
    core = u.T @ out @ vh.T
    off_diagonal = core - torch.diag(torch.diagonal(core))
    assert float(off_diagonal.abs().max()) < 1e-3
    assert bool((torch.diagonal(core) > 0).all())


def test_orthogonalize_ignores_the_gradient_scale() -> None:
    g = _random(32, 72)
    small, large = orthogonalize(g * 1e-4), orthogonalize(g * 1e3)
    torch.testing.assert_close(small, large, rtol=1e-3, atol=1e-4)


def test_orthogonalize_rejects_non_matrices() -> None:
    with pytest.raises(ValueError, match="2-d"):
        orthogonalize(torch.ones(2, 3, 4))


def test_plain_groups_step_exactly_like_torch_sgd() -> None:
    torch.manual_seed(0)
    a = nn.Parameter(_random(5, 3))
    b = nn.Parameter(a.detach().clone())
    ours = Muon([{"params": [a], "weight_decay": 0.01}], lr=0.1, momentum=0.85, nesterov=True)
    ref = torch.optim.SGD([b], lr=0.1, momentum=0.85, nesterov=True, weight_decay=0.01)
    for step in range(4):
        grad = _random(5, 3, seed=step + 1)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-7)


def test_filter_groups_take_a_normalised_orthogonal_step() -> None:
    w = nn.Parameter(_random(8, 4, 3, 3) * 5)
    opt = Muon([{"params": [w], "orthogonalize": True}], lr=0.2, momentum=0.6, nesterov=True)
    before = w.detach().clone()
    grads = [_random(8, 4, 3, 3, seed=s) for s in (1, 2)]
    buf = torch.zeros_like(before)
    expected = before
    for grad in grads:
        w.grad = grad.clone()
        opt.step()
        buf = 0.6 * buf + grad
        direction = grad + 0.6 * buf
        expected = expected * (8**0.5 / expected.norm())
        expected = expected - 0.2 * orthogonalize(direction.reshape(8, -1)).view_as(expected)
        torch.testing.assert_close(w.detach(), expected, rtol=1e-5, atol=1e-6)
    # The weight was renormalised to norm sqrt(8) before each step, so it stays near that size
    # however large it started.
    assert float(w.detach().norm()) == pytest.approx(8**0.5, rel=0.3)


def test_filter_groups_need_matrices() -> None:
    with pytest.raises(ValueError, match="filter banks"):
        Muon([{"params": [nn.Parameter(torch.ones(4))], "orthogonalize": True}], lr=0.1)


def test_muon_recipe_groups_the_fastnet_parameters() -> None:
    recipe = get_recipe("cifar10_fastnet_muon")
    net = FastNet(num_classes=10, in_channels=3, image_size=32)
    net.whiten.weight.requires_grad_(False)  # as init_whitening leaves it
    opt, lookahead = build_optimizer(net, recipe, total_steps=100)
    assert isinstance(opt, Muon) and lookahead is None
    names = {id(p): n for n, p in net.named_parameters()}
    groups = {tuple(sorted(names[id(p)] for p in g["params"])): g for g in opt.param_groups}
    filters = next(g for g in opt.param_groups if g["orthogonalize"])
    assert {names[id(p)] for p in filters["params"]} == {
        f"blocks.{i}.conv{j}.weight" for i in range(3) for j in (1, 2)
    }
    assert filters["base_lr"] == 0.24 and filters["momentum"] == 0.6
    assert filters["weight_decay"] == 0.0
    head = groups[("head.weight",)]
    whiten_bias = groups[("whiten.bias",)]
    # airbench units: lr * batch / (1024 * (1 + 1 / (1 - 0.85))), biases 64x the head's.
    head_lr = 6.5 * 2000 / (1024 * (1 + 1 / 0.15))
    assert head["base_lr"] == pytest.approx(head_lr)
    assert whiten_bias["base_lr"] == pytest.approx(64 * head_lr)
    assert head["momentum"] == 0.85 and not head["orthogonalize"]
    # decay_all: every SGD group shrinks its weights by the same fraction per step.
    shrink = {g["base_lr"] * g["weight_decay"] for g in opt.param_groups if not g["orthogonalize"]}
    assert max(shrink) == pytest.approx(min(shrink))
    assert min(shrink) == pytest.approx(0.0157 * 2000 / (1024 * (1 + 1 / 0.15)))


def test_muon_state_survives_a_checkpoint_round_trip() -> None:
    recipe = get_recipe("cifar10_fastnet_muon")
    torch.manual_seed(0)
    net = FastNet(num_classes=10, in_channels=3, image_size=32)
    opt, _ = build_optimizer(net, recipe, total_steps=10)
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    opt.step()
    state = opt.state_dict()
    net2 = FastNet(num_classes=10, in_channels=3, image_size=32)
    net2.load_state_dict(net.state_dict())
    opt2, _ = build_optimizer(net2, recipe, total_steps=10)
    opt2.load_state_dict(state)
    buffers = [opt2.state[p]["momentum_buffer"] for p in net2.blocks[0].conv1.parameters()]
    torch.testing.assert_close(buffers[0], opt.state[net.blocks[0].conv1.weight]["momentum_buffer"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"muon_lr": 0.0}, "muon_lr must be > 0"),
        ({"muon_momentum": 1.0}, "muon_momentum must be in"),
        ({"bias_lr_scale": 0.0}, "bias_lr_scale must be > 0"),
        ({"optimizer": "adam"}, "airbench_units applies only to optimizers sgd and muon"),
    ],
)
def test_muon_recipe_fields_are_checked(changes: dict[str, object], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        get_recipe("cifar10_fastnet_muon").override(**changes)
