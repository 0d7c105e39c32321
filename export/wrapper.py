"""The exported signature: uint8 NHWC `image` in, float32 `logits` out.

`NHWCToNCHW -> InputPreprocess -> network` in one module, so the float conversion, the chroma
low-pass (when the model has one) and mean / std normalisation are part of the graph and serving
cannot feed the network differently from training. The same wrapper is traced to TorchScript
and exported to ONNX.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from models.preprocess import InputPreprocess, NHWCToNCHW
from training.checkpoint import DataInfo


class ExportWrapper(nn.Module):
    """`image` uint8 `[N, H, W, C]` -> `logits` float32 `[N, K]`.

    `compute_dtype` other than float32 (the fp16 export) casts the normalised input to that
    dtype for the network and the logits back to float32, so the graph's interface is the
    same. The network's weights must already be in `compute_dtype`.
    """

    def __init__(
        self,
        network: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        compute_dtype: torch.dtype = torch.float32,
        chroma_subsampling: int = 1,
    ) -> None:
        super().__init__()
        self.to_nchw = NHWCToNCHW()
        self.preprocess = InputPreprocess(mean, std, chroma_subsampling=chroma_subsampling)
        self.network = network
        self.compute_dtype = compute_dtype

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(self.to_nchw(image))
        if self.compute_dtype != torch.float32:
            x = x.to(self.compute_dtype)
        logits: torch.Tensor = self.network(x)
        if logits.dtype != torch.float32:
            logits = logits.to(torch.float32)
        return logits


def build_wrapper(
    network: nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    half: bool = False,
    chroma_subsampling: int = 1,
) -> ExportWrapper:
    """An eval-mode wrapper; `half` wraps an fp16 copy of the network (the original stays)."""
    if half:
        network = copy.deepcopy(network).half()
    wrapper = ExportWrapper(
        network,
        mean,
        std,
        compute_dtype=torch.float16 if half else torch.float32,
        chroma_subsampling=chroma_subsampling,
    )
    return wrapper.eval()


def wrapper_for(network: nn.Module, info: DataInfo, *, half: bool = False) -> ExportWrapper:
    """`build_wrapper` with the input preparation a checkpoint records (`DataInfo`)."""
    return build_wrapper(
        network, info.mean, info.std, half=half, chroma_subsampling=info.chroma_subsampling
    )
