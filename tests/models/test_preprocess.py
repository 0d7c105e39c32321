"""Input preparation: normalisation and the chroma low-pass, on values (and against libjpeg)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

from export.onnx_export import export_onnx
from export.wrapper import build_wrapper
from models.preprocess import ChromaLowPass, InputPreprocess, Normalize

LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def _stripes(height: int = 32, width: int = 32) -> np.ndarray:
    """An RGB image with smooth gradients and one-pixel colour stripes (high-frequency chroma)."""
    yy, xx = np.mgrid[0:height, 0:width]
    red = 128 + 100 * np.sin(xx / 3.0)
    green = 128 + 100 * np.cos(yy / 4.0)
    blue = 98 + 60 * ((xx + yy) % 2)
    return np.stack([red, green, blue], -1).clip(0, 255).astype(np.uint8)


def _nchw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]


def _jpeg_420(image: np.ndarray) -> np.ndarray:
    """What libjpeg gives back for `image` saved at quality 100 with 4:2:0 chroma."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=100, subsampling=2)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).astype(np.float32)


def test_luma_is_kept_and_grey_passes_unchanged() -> None:
    torch.manual_seed(0)
    colour = torch.rand(2, 3, 16, 12) * 255
    out = ChromaLowPass(2)(colour)
    assert torch.allclose((out * LUMA).sum(1), (colour * LUMA).sum(1), atol=1e-3)
    assert not torch.allclose(out, colour, atol=1.0)  # the colour did change
    grey = (torch.rand(1, 1, 16, 12) * 255).repeat(1, 3, 1, 1)
    assert torch.allclose(ChromaLowPass(2)(grey), grey, atol=1e-3)


def test_colour_constant_over_the_image_passes_unchanged() -> None:
    torch.manual_seed(1)
    luma = torch.rand(1, 1, 8, 8) * 100
    tint = torch.tensor([60.0, 20.0, 90.0]).view(1, 3, 1, 1)
    image = luma + tint  # one chroma everywhere, any luma pattern
    assert torch.allclose(ChromaLowPass(2)(image), image, atol=1e-3)
    assert torch.allclose(ChromaLowPass(4)(image), image, atol=1e-3)


def test_factor_two_is_what_a_jpeg_420_round_trip_does_to_colour() -> None:
    image = _stripes()
    jpeg = _jpeg_420(image)
    ours = ChromaLowPass(2)(_nchw(image))[0].permute(1, 2, 0).numpy()
    untouched_error = np.abs(image.astype(np.float32) - jpeg).mean()
    our_error = np.abs(ours - jpeg).mean()
    assert untouched_error > 8.0  # the stripes' colour really is lost by 4:2:0
    assert our_error < 1.0  # what remains: libjpeg's rounding and DCT at quality 100
    assert our_error < 0.1 * untouched_error


def test_without_chroma_input_preprocess_is_normalize() -> None:
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.3, 0.25]
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    plain = InputPreprocess(mean, std)
    assert plain.chroma is None
    assert torch.equal(plain(images), Normalize(mean, std)(images))
    low = InputPreprocess(mean, std, chroma_subsampling=2)
    expected = Normalize(mean, std)(ChromaLowPass(2)(images.float()))
    assert torch.allclose(low(images), expected)


@pytest.mark.parametrize(
    ("mean", "factor", "message"),
    [
        ([0.5, 0.5, 0.5], 3, "chroma_subsampling must be one of"),
        ([0.5], 2, "needs RGB input"),
    ],
)
def test_bad_arguments_are_refused(mean: list[float], factor: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InputPreprocess(mean, [0.25] * len(mean), chroma_subsampling=factor)


def test_the_exported_graph_applies_the_low_pass_like_torch(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5))  # every pixel counts
    wrapper = build_wrapper(net.eval(), [0.5, 0.4, 0.3], [0.2, 0.3, 0.25], chroma_subsampling=2)
    plain = build_wrapper(net.eval(), [0.5, 0.4, 0.3], [0.2, 0.3, 0.25])
    path = tmp_path / "model.onnx"
    images = np.stack([_stripes(16, 16), _stripes(16, 16)[::-1].copy()])
    export_onnx(wrapper, torch.from_numpy(images), path, opset=21)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    served = session.run(["logits"], {"image": images})[0]
    with torch.inference_mode():
        eager = wrapper(torch.from_numpy(images)).numpy()
        without = plain(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(served, eager, atol=1e-4)
    assert np.abs(served - without).max() > 1e-2  # the low-pass is really in the graph
