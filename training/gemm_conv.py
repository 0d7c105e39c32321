"""Convolution weight gradients as one matrix product, for the layers oneDNN is slow at.

On an Intel host with AMX, oneDNN's bf16 weight-gradient kernel (`brgconv_bwd_w`) for fastnet's
small late layers takes 4-9x its forward pass (a 256-to-256 3x3 convolution at 3x3 pixels, batch
2000: 81 ms against 9 ms forward), while the same gradient computed as im2col + one GEMM takes
16 ms (docs/training.md, "Weight gradients as one GEMM"). The gradient is a plain matrix
product: grad_out as (C_out, N*H*W) times the input's k*k shifted copies as (N*H*W, k*k*C_in).

`gemm_weight_grads(model, max_side)` switches the selected convolutions to that path while
training and back on exit; the modules and their parameters stay the same objects, so
optimizers, EMA, state dicts and exports see no difference. Only the weight gradient changes;
the forward pass and the input gradient stay oneDNN's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input


def conv_weight_grad_gemm(
    grad_out: torch.Tensor, inputs: torch.Tensor, kernel: int, padding: int
) -> torch.Tensor:
    """d(loss)/d(weight) of a stride-1, ungrouped k x k convolution, as one GEMM.

    grad_out: (N, C_out, H_out, W_out); inputs: (N, C_in, H, W); both of one dtype. Returns
    (C_out, C_in, k, k) in that dtype, channels-last like the weights of a channels-last model.
    The product accumulates in float32 inside the GEMM (oneDNN's bf16 matmul does).
    """
    n, c_in = inputs.shape[:2]
    c_out, h_out, w_out = grad_out.shape[1:]
    # NHWC, padded: the k*k windows of every output pixel become one strided view.
    padded = F.pad(inputs.permute(0, 2, 3, 1), (0, 0, padding, padding, padding, padding))
    padded = padded.contiguous()
    s_n, s_h, s_w, _ = padded.stride()
    windows = padded.as_strided(
        (n, h_out, w_out, kernel, kernel, c_in), (s_n, s_h, s_w, s_h, s_w, 1)
    )
    columns = windows.reshape(n * h_out * w_out, kernel * kernel * c_in)
    # (C_out, N*H*W) contiguous: the GEMM reads both operands along their rows.
    grad_rows = grad_out.permute(1, 0, 2, 3).reshape(c_out, -1)
    weight_grad = grad_rows @ columns  # (C_out, k*k*C_in), in (kh, kw, C_in) order
    return weight_grad.view(c_out, kernel, kernel, c_in).permute(0, 3, 1, 2)


class _GemmWeightGradConv(torch.autograd.Function):
    """conv2d (stride 1, ungrouped, no bias) whose weight gradient is `conv_weight_grad_gemm`."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
        # Cast as autocast would, and run the convolution without it, so backward knows the
        # dtype the forward pass used.
        autocast = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu") if autocast else inputs.dtype
        x = inputs.to(dtype)
        w = weight.to(dtype)
        with torch.autocast("cpu", enabled=False):
            out = F.conv2d(x, w, None, 1, padding)
        ctx.save_for_backward(x, w)
        ctx.padding = padding
        ctx.weight_dtype = weight.dtype
        ctx.input_dtype = inputs.dtype
        return out

    @staticmethod
    def backward(
        ctx: Any, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, w = ctx.saved_tensors
        padding: int = ctx.padding
        grad_out = grad_out.to(x.dtype)
        grad_input = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_input = conv2d_input(  # type: ignore[no-untyped-call]
                x.shape, w, grad_out, padding=padding
            ).to(ctx.input_dtype)
        if ctx.needs_input_grad[1]:
            grad = conv_weight_grad_gemm(grad_out, x, w.shape[-1], padding)
            grad_weight = grad.to(ctx.weight_dtype).contiguous(memory_format=_weight_format(w))
        return grad_input, grad_weight, None


def _weight_format(weight: torch.Tensor) -> torch.memory_format:
    if weight.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def supports_gemm_weight_grad(conv: nn.Conv2d) -> bool:
    """Whether `conv` is one `conv_weight_grad_gemm` computes: square kernel, stride 1,
    dilation 1, one group, no bias, symmetric integer padding, zero padding mode."""
    k = conv.kernel_size
    pad = conv.padding
    return (
        type(conv) is nn.Conv2d
        and k[0] == k[1]
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.bias is None
        and conv.padding_mode == "zeros"
        and not isinstance(pad, str)
        and pad[0] == pad[1]
    )


def _gemm_forward(conv: nn.Conv2d, max_side: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward for `conv` that takes the GEMM weight gradient for outputs up to `max_side`
    pixels a side; wider inputs, inference and frozen weights take the module's own path, so
    one swap serves every resolution of a progressive schedule."""
    padding = int(conv.padding[0])
    kernel = conv.kernel_size[0]
    own_forward = type(conv).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        out_side = max(x.shape[-2:]) + 2 * padding - kernel + 1
        if (
            out_side > max_side
            or x.device.type != "cpu"
            or not torch.is_grad_enabled()
            or not conv.weight.requires_grad
        ):
            out: torch.Tensor = own_forward(conv, x)
            return out
        result: torch.Tensor = _GemmWeightGradConv.apply(x, conv.weight, padding)
        return result

    return forward


@contextmanager
def gemm_weight_grads(model: nn.Module, max_side: int) -> Iterator[int]:
    """Within the block, the model's supported convolutions compute their weight gradient as
    one GEMM whenever their output is at most `max_side` pixels a side; yields how many
    convolutions were switched (the side is checked per call, on the input at hand).

    Each switched convolution gets an instance-level `forward` for the duration, so module
    types, parameter names and state-dict keys stay as they are (EMA, DDP and checkpoints see
    the same model). max_side 0 switches nothing. On exit, even on an exception, every
    convolution has its own forward again.
    """
    switched: list[nn.Conv2d] = []
    if max_side > 0:
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and supports_gemm_weight_grad(module):
                module.forward = _gemm_forward(module, max_side)  # type: ignore[method-assign,assignment]
                switched.append(module)
    try:
        yield len(switched)
    finally:
        for module in switched:
            del module.forward
