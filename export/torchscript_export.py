"""TorchScript export of an `ExportWrapper`: the same signature as the ONNX graph."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.jit import ScriptModule
from torch.jit._trace import TracerWarning


@contextmanager
def _quiet_jit() -> Iterator[None]:
    # torch.jit is deprecated upstream (FutureWarning on every call), but TorchScript is one
    # of the two formats the repository promises; the warnings tell the user nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=TracerWarning)
        yield


def export_torchscript(wrapper: torch.nn.Module, sample: torch.Tensor, path: Path) -> None:
    """Trace `wrapper` on `sample` (uint8 NHWC) and save it to `path`.

    Tracing records shape arithmetic symbolically, so the saved module takes any batch size;
    the parity check runs it at several to make sure.
    """
    with _quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(  # type: ignore[no-untyped-call]
            wrapper.eval(), (sample,), check_trace=False
        )
        traced.save(str(path))


def load_torchscript(path: Path) -> ScriptModule:
    """Load a saved module on the CPU, in eval mode."""
    with _quiet_jit():
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    if not isinstance(module, ScriptModule):
        raise TypeError(f"{path} did not load as a TorchScript module")
    module.eval()
    return module
