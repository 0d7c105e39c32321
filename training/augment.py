"""Batch augmentation with tensor ops: whole batches at once, on the batch's own device.

Every function takes an NCHW batch (uint8 or float), returns a new tensor of the same shape,
dtype and device, and never modifies its input. Randomness comes from `generator` when given
(draws happen on the generator's device and move to the batch's), so a seeded generator makes
a run repeatable; without one, torch's global generator is used.
"""

from __future__ import annotations

import torch


def _randint(
    high: int, count: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """`count` integers in [0, high), drawn where the generator lives, returned on `device`."""
    where = generator.device if generator is not None else device
    values = torch.randint(0, high, (count,), generator=generator, device=where)
    return values.to(device)


def _rand(count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    where = generator.device if generator is not None else device
    return torch.rand((count,), generator=generator, device=where).to(device)


def _check_batch(images: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"expected an NCHW batch, got shape {tuple(images.shape)}")


def _reflect(index: torch.Tensor, length: int) -> torch.Tensor:
    """Map indices in [-(length-1), 2*(length-1)] into [0, length) by mirroring at the edges.

    Same convention as `torch.nn.functional.pad(mode="reflect")`: the edge pixel is not repeated.
    """
    index = index.abs()
    return torch.where(index >= length, 2 * (length - 1) - index, index)


def random_crop(
    images: torch.Tensor, padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Reflect-pad each image by `padding` and crop it back to H x W at a random offset.

    Implemented as one gather with mirrored indices instead of materialising the padded batch,
    so it costs one pass over the data whatever the padding.
    """
    _check_batch(images)
    if padding < 0:
        raise ValueError(f"crop padding must be >= 0, got {padding}")
    n, _, h, w = images.shape
    if padding == 0 or n == 0:
        return images.clone()
    if padding >= h or padding >= w:
        raise ValueError(f"crop padding {padding} must be smaller than the image ({h}x{w})")
    device = images.device
    offset_y = _randint(2 * padding + 1, n, generator, device) - padding
    offset_x = _randint(2 * padding + 1, n, generator, device) - padding
    rows = _reflect(offset_y[:, None] + torch.arange(h, device=device), h)  # [N, H]
    cols = _reflect(offset_x[:, None] + torch.arange(w, device=device), w)  # [N, W]
    batch = torch.arange(n, device=device)[:, None, None]
    # Advanced indices split by a slice put their dims first: the result is [N, H, W, C].
    gathered = images[batch, :, rows[:, :, None], cols[:, None, :]]
    return gathered.permute(0, 3, 1, 2).contiguous()


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 0.5."""
    _check_batch(images)
    flip = _rand(images.shape[0], generator, images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def cutout(
    images: torch.Tensor, size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero one `size` x `size` square per image, placed at random entirely inside it."""
    _check_batch(images)
    if size < 0:
        raise ValueError(f"cutout size must be >= 0, got {size}")
    n, _, h, w = images.shape
    if size == 0 or n == 0:
        return images.clone()
    if size > h or size > w:
        raise ValueError(f"cutout size {size} is larger than the image ({h}x{w})")
    device = images.device
    top = _randint(h - size + 1, n, generator, device)
    left = _randint(w - size + 1, n, generator, device)
    ys = torch.arange(h, device=device)[None, :]
    xs = torch.arange(w, device=device)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + size)  # [N, H]
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + size)  # [N, W]
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # [N, 1, H, W]
    return images.masked_fill(mask, 0)


def augment_batch(
    images: torch.Tensor,
    *,
    crop_padding: int,
    flip: bool,
    cutout_size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop (translate), horizontal flip, then cutout; each step only when enabled."""
    out = images
    if crop_padding > 0:
        out = random_crop(out, crop_padding, generator)
    if flip:
        out = random_flip(out, generator)
    if cutout_size > 0:
        out = cutout(out, cutout_size, generator)
    return out if out is not images else images.clone()
