"""Weight gradients as one GEMM (`training.gemm_conv`): the same gradients, the same model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.registry import get_model
from training.gemm_conv import (
    conv_weight_grad_gemm,
    gemm_weight_grads,
    supports_gemm_weight_grad,
)


def _reference_weight_grad(
    grad_out: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, padding: int
) -> torch.Tensor:
    grad: torch.Tensor = torch.nn.grad.conv2d_weight(
        inputs, weight.shape, grad_out, padding=padding
    )
    return grad


@pytest.mark.parametrize(
    ("kernel", "padding", "side", "channels_last"),
    [(3, 1, 7, True), (3, 1, 5, False), (3, 0, 6, True), (1, 0, 4, False), (5, 2, 9, True)],
)
def test_gemm_weight_grad_equals_the_convolutions_own(
    kernel: int, padding: int, side: int, channels_last: bool
) -> None:
    gen = torch.Generator().manual_seed(kernel * 100 + side)
    inputs = torch.randn(3, 4, side, side, generator=gen, dtype=torch.float64)
    weight = torch.randn(6, 4, kernel, kernel, generator=gen, dtype=torch.float64)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        weight = weight.contiguous(memory_format=torch.channels_last)
    out_side = side + 2 * padding - kernel + 1
    grad_out = torch.randn(3, 6, out_side, out_side, generator=gen, dtype=torch.float64)
    got = conv_weight_grad_gemm(grad_out, inputs, kernel, padding)
    want = _reference_weight_grad(grad_out, inputs, weight, padding)
    assert got.shape == want.shape == (6, 4, kernel, kernel)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _fastnet() -> nn.Module:
    torch.manual_seed(0)
    return get_model("fastnet", num_classes=10, in_channels=3, image_size=32)


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_switched_fastnet_has_the_same_gradients_and_stays_the_same_model() -> None:
    model = _fastnet().double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 7, 9])
    want = _grads(model, x, y)
    keys = list(model.state_dict())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    with gemm_weight_grads(model, 32) as switched:
        # The six 3x3 block convolutions; the stem (bias, no padding) keeps oneDNN's path.
        assert switched == 6
        assert sum("forward" in vars(conv) for conv in convs) == 6
        assert list(model.state_dict()) == keys
        got = _grads(model, x, y)
    assert got.keys() == want.keys() and len(got) > 6
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12)
    assert not any("forward" in vars(conv) for conv in convs)


def test_bf16_autocast_gradients_keep_their_dtype_and_stay_close() -> None:
    model = _fastnet().to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.arange(16) % 10

    def grads() -> dict[str, torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return _grads(model, x, y)

    want = grads()
    with gemm_weight_grads(model, 8):
        got = grads()
    for name, grad in got.items():
        assert grad.dtype == torch.float32
        assert grad.shape == want[name].shape
    # Only the layers at 8 px or less (blocks 2 and 3's second convolutions and block 3's first)
    # change their arithmetic; bf16 rounding bounds the difference.
    for name in ("blocks.1.conv2.weight", "blocks.2.conv1.weight", "blocks.2.conv2.weight"):
        scale = want[name].abs().max()
        assert (got[name] - want[name]).abs().max() <= 0.02 * scale
    # The first block keeps oneDNN's weight gradient; only its upstream gradient may differ.
    first = want["blocks.0.conv1.weight"]
    assert (got["blocks.0.conv1.weight"] - first).abs().max() <= 1e-3 * first.abs().max()


def test_side_limit_selects_by_output_size_and_inference_is_untouched() -> None:
    model = _fastnet()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    calls: list[bool] = []

    def count(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        calls.append(out.grad_fn is not None and "Gemm" in type(out.grad_fn).__name__)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with gemm_weight_grads(model, 8):
        model(x)
        gemm_calls = sum(calls)
        calls.clear()
        with torch.no_grad():
            want = model(x)
        assert sum(calls) == 0
    for hook in hooks:
        hook.remove()
    # Block outputs at 31, 15, 15, 7, 7 and 3 px: three are at most 8 px.
    assert gemm_calls == 3
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)


def test_zero_switches_nothing_and_an_exception_restores_every_forward() -> None:
    model = _fastnet()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    with gemm_weight_grads(model, 0) as switched:
        assert switched == 0
        assert not any("forward" in vars(conv) for conv in convs)
    with pytest.raises(RuntimeError, match="boom"), gemm_weight_grads(model, 8):
        raise RuntimeError("boom")
    assert not any("forward" in vars(conv) for conv in convs)


@pytest.mark.parametrize(
    ("conv", "supported"),
    [
        (nn.Conv2d(4, 8, 3, padding=1, bias=False), True),
        (nn.Conv2d(4, 8, 3, padding=1, bias=True), False),
        (nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), False),
        (nn.Conv2d(4, 8, 3, padding=2, dilation=2, bias=False), False),
        (nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=False), False),
        (nn.Conv2d(4, 8, (3, 1), padding=(1, 0), bias=False), False),
        (nn.Conv2d(4, 8, 3, padding="same", bias=False), False),
        (nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect", bias=False), False),
    ],
)
def test_supported_convolutions(conv: nn.Conv2d, supported: bool) -> None:
    assert supports_gemm_weight_grad(conv) is supported
