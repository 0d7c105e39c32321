"""airbench94's training mechanics as recipe fields: each one does what the recipe says."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from models.fastnet import FastNet
from tests.training.conftest import tiny_recipe
from training.augment import alternating_flip_mask, augment_batch, flip_where
from training.checkpoint import load_checkpoint
from training.engine import _whitening_sample, steps_per_epoch, train
from training.evaluate import tta_logits
from training.lookahead import Lookahead
from training.optim import build_optimizer
from training.recipes import Recipe, RecipeError, get_recipe, nesterov_gain, sgd_hyperparameters
from training.schedules import build_schedule

# --- optimiser: airbench units, BatchNorm-bias lr, decay everywhere ------------------------


def test_airbench_units_convert_to_the_published_torch_values() -> None:
    recipe = get_recipe("cifar10_fastnet")
    assert recipe.airbench_units and recipe.batch_size == 1024
    lr, decay = sgd_hyperparameters(recipe)
    # airbench: lr 11.5 / (1024 * (1 + 1/0.15)) on a summed loss = 1.5 on the batch mean.
    assert nesterov_gain(0.85) == pytest.approx(1 + 1 / 0.15)
    assert lr == pytest.approx(11.5 / (1 + 1 / 0.15))
    assert lr == pytest.approx(1.5)
    # Shrink per step at the peak lr: 0.0153 * 1024 / (1024 * gain) = 0.0153 / gain.
    assert lr * decay == pytest.approx(0.0153 / nesterov_gain(0.85))
    # Both follow the batch size: half the batch, half the step and half the shrink.
    half_lr, half_decay = sgd_hyperparameters(recipe.override(batch_size=512))
    assert half_lr == pytest.approx(lr / 2)
    assert half_lr * half_decay == pytest.approx(lr * decay / 2)
    plain = recipe.override(airbench_units=False)
    assert sgd_hyperparameters(plain) == (plain.lr, plain.weight_decay)


def _fastnet() -> FastNet:
    torch.manual_seed(0)
    net = FastNet(num_classes=10, in_channels=3, image_size=32)
    net.whiten.weight.requires_grad_(False)
    return net


def test_norm_biases_get_the_scaled_lr_and_every_group_the_same_shrink_per_step() -> None:
    net = _fastnet()
    recipe = get_recipe("cifar10_fastnet")
    opt, lookahead = build_optimizer(net, recipe, total_steps=100)
    assert lookahead is not None and lookahead.alpha_power == 3.0
    lr, decay = sgd_hyperparameters(recipe)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    norm_ids = {id(p) for m in norms for p in m.parameters()}
    for group in opt.param_groups:
        is_norm = {id(p) in norm_ids for p in group["params"]}
        assert len(is_norm) == 1  # groups never mix kinds
        scale = recipe.norm_bias_lr_scale if is_norm.pop() else 1.0
        assert group["base_lr"] == pytest.approx(lr * scale)
        # decay_all: coefficient / lr multiplier, so lr * coefficient is the same everywhere.
        assert group["base_lr"] * group["weight_decay"] == pytest.approx(lr * decay)
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(net.whiten.bias) in grouped and id(net.whiten.weight) not in grouped
    # Behaviour, not just bookkeeping: with zero gradients one step shrinks every trainable
    # tensor (conv weights, BN biases, stem bias) by the same fraction.
    trainable = [p for p in net.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in trainable:
            p.fill_(1.0)
            p.grad = torch.zeros_like(p)
    opt.step()
    shrunk = {round(float(p.detach().flatten()[0]), 9) for p in trainable}
    # First Nesterov step on a constant (decay-only) gradient: (1 + momentum) times lr * decay.
    assert len(shrunk) == 1
    assert shrunk.pop() == pytest.approx(1 - lr * decay * (1 + recipe.momentum))


def test_without_decay_all_norm_and_bias_parameters_are_not_decayed() -> None:
    recipe = get_recipe("cifar10_fastnet").override(decay_all=False, norm_bias_lr_scale=4.0)
    opt, _ = build_optimizer(_fastnet(), recipe, total_steps=10)
    lr, decay = sgd_hyperparameters(recipe)
    assert sorted((g["base_lr"], g["weight_decay"]) for g in opt.param_groups) == sorted(
        [(lr, decay), (lr * 4.0, 0.0), (lr, 0.0)]
    )


def test_a_ramped_lookahead_needs_the_run_length() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        build_optimizer(_fastnet(), get_recipe("cifar10_fastnet"))


# --- Lookahead with a ramped step size, buffers and the final hand-over ------------------------


def test_ramped_alpha_follows_the_cubic_schedule() -> None:
    w = nn.Parameter(torch.zeros(1))
    la = Lookahead(torch.optim.SGD([w], lr=1.0), k=5, alpha=0.25, alpha_power=3, total_steps=100)
    assert la.alpha_at(0) == pytest.approx(1.0)  # no averaging at the start
    assert la.alpha_at(50) == pytest.approx(1 - 0.75 * 0.125)
    assert la.alpha_at(100) == pytest.approx(0.25)
    assert la.alpha_at(500) == pytest.approx(0.25)
    flat = Lookahead(torch.optim.SGD([w], lr=1.0), k=5, alpha=0.25)
    assert flat.alpha_at(0) == flat.alpha_at(77) == 0.25


def test_sync_uses_the_ramped_alpha_and_averages_buffers() -> None:
    w = nn.Parameter(torch.tensor([0.0]))
    running = torch.tensor([10.0])
    la = Lookahead(
        torch.optim.SGD([w], lr=1.0),
        k=2,
        alpha=0.5,
        alpha_power=1,
        total_steps=4,
        buffers=[running],
    )
    for _ in range(2):
        w.grad = torch.tensor([-1.0])  # each fast step moves w by +1
        la.step()
    # Sync at step 2 of 4: alpha = 1 - 0.5 * 0.5 = 0.75; slow 0 -> 0.75 * 2 = 1.5.
    assert w.item() == pytest.approx(1.5)
    assert running.item() == pytest.approx(10.0)  # buffer unchanged so far: slow == fast
    running.fill_(14.0)  # BatchNorm statistics move during the next fast steps
    w.grad = torch.tensor([-1.0])
    la.step()
    w.grad = torch.tensor([-1.0])
    la.step()
    # Sync at step 4 of 4: alpha = 0.5; w: 1.5 + 0.5 * (3.5 - 1.5) = 2.5; buffer 10 -> 12.
    assert w.item() == pytest.approx(2.5)
    assert running.item() == pytest.approx(12.0)


def test_finish_hands_the_network_the_slow_weights() -> None:
    w = nn.Parameter(torch.tensor([0.0]))
    running = torch.tensor([1.0])
    la = Lookahead(torch.optim.SGD([w], lr=1.0), k=5, alpha=0.5, buffers=[running])
    w.grad = torch.tensor([-1.0])
    la.step()
    running.fill_(3.0)
    assert w.item() == pytest.approx(1.0)
    la.finish()
    assert w.item() == pytest.approx(0.0)
    assert running.item() == pytest.approx(1.0)


def test_lookahead_buffer_state_round_trips_and_mismatch_is_refused() -> None:
    w, b = nn.Parameter(torch.tensor([1.0])), torch.tensor([2.0])
    la = Lookahead(torch.optim.SGD([w], lr=0.1), k=2, buffers=[b])
    la.slow_buffers[0].fill_(7.0)
    state = la.state_dict()
    w2, b2 = nn.Parameter(torch.tensor([1.0])), torch.tensor([2.0])
    la2 = Lookahead(torch.optim.SGD([w2], lr=0.1), k=2, buffers=[b2])
    la2.load_state_dict(state)
    assert la2.slow_buffers[0].item() == 7.0
    bare = Lookahead(torch.optim.SGD([nn.Parameter(torch.tensor([1.0]))], lr=0.1), k=2)
    with pytest.raises(ValueError, match="averaged buffers"):
        bare.load_state_dict(state)


# --- alternating flip -------------------------------------------------------------------------


def test_flip_where_mirrors_exactly_the_masked_images() -> None:
    images = torch.arange(2 * 1 * 2 * 3).reshape(2, 1, 2, 3).to(torch.uint8)
    out = flip_where(images, torch.tensor([True, False]))
    assert torch.equal(out[0], images[0].flip(2))
    assert torch.equal(out[1], images[1])
    with pytest.raises(ValueError, match="bool mask"):
        flip_where(images, torch.tensor([1, 0]))


def test_alternating_flip_shows_each_image_both_ways_every_two_epochs() -> None:
    base = torch.rand(1000, generator=torch.Generator().manual_seed(1)) < 0.5
    masks = [alternating_flip_mask(base, epoch) for epoch in range(1, 6)]
    assert torch.equal(masks[0], base)
    for first, second in itertools.pairwise(masks):
        assert torch.equal(second, ~first)
    assert 400 < int(base.sum()) < 600  # the run's initial states are random
    with pytest.raises(ValueError, match="from 1"):
        alternating_flip_mask(base, 0)


def test_augment_batch_takes_the_flip_mask_instead_of_a_draw() -> None:
    images = torch.randint(0, 255, (6, 3, 8, 8), dtype=torch.uint8)
    mask = torch.tensor([True, False, True, True, False, False])
    out = augment_batch(images, crop_padding=0, flip=True, cutout_size=0, flip_mask=mask)
    assert torch.equal(out, flip_where(images, mask))


# --- test-time augmentation -------------------------------------------------------------------


class _Linear(nn.Module):
    """logits = flattened image @ W: any view's contribution is exactly computable."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape[0] * shape[1] * shape[2], 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


def test_tta_levels_weight_airbench_s_six_views() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 2, 6, 5)
    net = _Linear((2, 6, 5))
    with torch.no_grad():
        plain = net(x)
        mirror = net(x.flip(3))
        padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        up_left, down_right = padded[:, :, :6, :5], padded[:, :, 2:, 2:]
        views = [net(v) + net(v.flip(3)) for v in (up_left, down_right)]
        expected = 0.25 * (plain + mirror) + 0.125 * (views[0] + views[1])
        assert torch.allclose(tta_logits(net, x, 0), plain)
        assert torch.allclose(tta_logits(net, x, 1), 0.5 * (plain + mirror))
        assert torch.allclose(tta_logits(net, x, 2), expected, atol=1e-5)
        assert not torch.allclose(tta_logits(net, x, 2), tta_logits(net, x, 1), atol=1e-3)
    with pytest.raises(ValueError, match="tta level"):
        tta_logits(net, x, 3)


# --- recipe validation of the new fields ------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"flip_mode": "sometimes"}, "flip_mode must be one of"),
        ({"keep": "worst"}, "keep must be one of"),
        ({"tta": 3}, "tta must be"),
        ({"optimizer": "adam"}, "airbench_units applies only to optimizers sgd and muon"),
        ({"norm_bias_lr_scale": 0.0}, "norm_bias_lr_scale must be > 0"),
        ({"lookahead_alpha_power": -1.0}, "lookahead_alpha_power must be >= 0"),
        ({"whiten_bias_epochs": -1}, "whiten_bias_epochs must be >= 0"),
    ],
)
def test_new_fields_are_validated(changes: dict[str, object], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        get_recipe("cifar10_fastnet").override(**changes)


def test_whiten_bias_epochs_needs_fastnet() -> None:
    with pytest.raises(RecipeError, match="only to model fastnet"):
        get_recipe("cifar10_resnet_small").override(whiten_bias_epochs=3)


def test_cifar10_fastnet_schedule_matches_airbench_in_proportion() -> None:
    recipe = get_recipe("cifar10_fastnet")
    per_epoch = steps_per_epoch(45_000, recipe.batch_size)
    schedule = build_schedule(
        recipe.schedule,
        epochs=recipe.epochs,
        steps_per_epoch=per_epoch,
        warmup_epochs=recipe.warmup_epochs,
        warmup_start_factor=recipe.warmup_start_factor,
        final_factor=recipe.final_lr_factor,
    )
    assert schedule.warmup_steps / schedule.total_steps == pytest.approx(0.23, abs=0.01)
    assert schedule.factor(0) == pytest.approx(0.2)
    assert max(schedule.values()) == pytest.approx(1.0)
    assert schedule.factor(schedule.total_steps - 1) == pytest.approx(0.07)


# --- the engine wires them in -----------------------------------------------------------------

_COMMON = {"data_root": None, "device": "cpu", "progress": False, "limit_per_class": 8}


def _airbench_tiny(**changes: object) -> Recipe:
    return tiny_recipe(
        epochs=3,
        flip_mode="alternate",
        lookahead_k=2,
        lookahead_alpha=0.3,
        lookahead_alpha_power=3.0,
        lookahead_buffers=True,
        norm_bias_lr_scale=8.0,
        decay_all=True,
        whiten_bias_epochs=1,
        keep="last",
        tta=2,
        **changes,
    )


def test_whitening_statistics_come_from_every_class_not_a_prefix() -> None:
    # An image-folder data set is stored class by class: a prefix would be one or two classes.
    labels = torch.arange(10).repeat_interleave(500)
    images = labels.view(-1, 1, 1, 1).expand(-1, 3, 4, 4).to(torch.uint8).contiguous()
    recipe = tiny_recipe(whiten_images=1000)
    sample = _whitening_sample(images, recipe)
    assert sample.shape == (1000, 3, 4, 4)
    per_class = torch.bincount(sample[:, 0, 0, 0].long(), minlength=10)
    # ~100 each; the first 1,000 images would be 500, 500, 0, ...
    assert int(per_class.min()) >= 60, per_class.tolist()
    assert torch.equal(sample, _whitening_sample(images, recipe))  # seeded: resumes match
    other = recipe.override(seed=recipe.seed + 1)
    assert not torch.equal(sample, _whitening_sample(images, other))


def test_whiten_bias_is_trained_only_for_its_epochs(tmp_path: Path) -> None:
    def stem_bias(recipe: Recipe, out: Path) -> tuple[torch.Tensor, torch.Tensor]:
        part = train(recipe, out_dir=out, stop_after_epoch=1, **_COMMON)  # type: ignore[arg-type]
        after_1 = load_checkpoint(part.last_checkpoint).state_dict["whiten.bias"]
        done = train(recipe, out_dir=out, resume=part.last_checkpoint, **_COMMON)  # type: ignore[arg-type]
        return after_1, load_checkpoint(done.last_checkpoint).state_dict["whiten.bias"]

    frozen_after_1, frozen_end = stem_bias(
        tiny_recipe(epochs=2, whiten_bias_epochs=1), tmp_path / "a"
    )
    assert torch.count_nonzero(frozen_after_1) > 0  # it trained in epoch 1 (starts at zero)
    assert torch.equal(frozen_after_1, frozen_end)  # and not afterwards
    free_after_1, free_end = stem_bias(tiny_recipe(epochs=2), tmp_path / "b")
    assert not torch.equal(free_after_1, free_end)


def test_airbench_features_resume_exactly_and_keep_the_last_weights(tmp_path: Path) -> None:
    recipe = _airbench_tiny()
    whole = train(recipe, out_dir=tmp_path / "whole", **_COMMON)  # type: ignore[arg-type]
    part = train(recipe, out_dir=tmp_path / "part", stop_after_epoch=2, **_COMMON)  # type: ignore[arg-type]
    resumed = train(recipe, out_dir=tmp_path / "part", resume=part.last_checkpoint, **_COMMON)  # type: ignore[arg-type]
    assert whole.weights_digest == resumed.weights_digest
    # keep=last: best.pt is the final epoch whatever its accuracy, and reports its own.
    best = load_checkpoint(whole.best_checkpoint)
    rows = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert best.epoch == 3 == whole.best_epoch
    assert all(r["best"] for r in rows)
    assert best.metrics["val_accuracy"] == pytest.approx(rows[-1]["val_acc"])
    # The final weights are Lookahead's slow weights: best.pt equals last.pt's network.
    last = load_checkpoint(whole.last_checkpoint)
    assert last.resume is not None
    for key, value in best.state_dict.items():
        assert torch.equal(value, last.resume["model"][key]), key
    # tta=2 adds the augmented validation accuracy to the result, best.pt and summary.json.
    assert whole.val_accuracy_tta is not None and 0.0 <= whole.val_accuracy_tta <= 1.0
    assert best.metrics["val_accuracy_tta"] == pytest.approx(whole.val_accuracy_tta)
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["val_accuracy_tta"] == pytest.approx(whole.val_accuracy_tta)
    assert summary["tta"] == 2


def test_auto_amp_on_the_cpu_follows_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    from training import engine

    cpu = torch.device("cpu")
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)
    assert engine.autocast_dtype("auto", cpu) is None
    assert engine.autocast_dtype("bf16", cpu) == torch.bfloat16  # forced: the user's call
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    assert engine.autocast_dtype("auto", cpu) == torch.bfloat16
    assert engine.autocast_dtype("off", cpu) is None
