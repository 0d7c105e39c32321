"""Images and pre-built requests of `imgzoo bench serve`, and the check of their answers.

Images come from a directory or a .tar(.gz) of image files (CIFAR-10 PNGs, say), taken
round-robin over their folders so every class is represented, or else from the embedded demo
set (drawn shapes, encoded as PNG here). Every request kind is built once into whole HTTP/1.1
request bytes, so the load generator only writes them.

Request kinds (all documented in docs/service.md):

- `single`: one image as the multipart field `file` of `POST /predict/<dataset>/<model>`
  (the issue's reference method, and the only kind the naive servers take);
- `multi`: several images as repeated `file` fields of one multipart request;
- `raw`: one image as the raw body with its `image/*` content type;
- `v2-uint8`: the Open Inference Protocol with the binary tensor extension, one image as
  decoded UINT8 `[1, H, W, C]` pixels, logits asked back in binary;
- `v2-bytes`: the same with the encoded image as a BYTES `[1]` tensor (what tritonclient sends
  for files), decoded by the service.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imgzoo.errors import UserError

KINDS = ("single", "multi", "raw", "v2-uint8", "v2-bytes")
DEFAULT_KINDS = ("single", "multi", "raw", "v2-uint8")
NAIVE_KINDS = ("single",)  # a tutorial-style server takes one multipart file, nothing else
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
BOUNDARY = "imgzoo-bench-0f6c2b9e7d"
_CONTENT_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
    ".bmp": "image/bmp", ".gif": "image/gif",
}  # fmt: skip


@dataclass(frozen=True)
class Image:
    """One encoded image."""

    name: str
    data: bytes
    content_type: str


@dataclass(frozen=True)
class ImageSet:
    """The encoded images of a run and where they came from."""

    images: tuple[Image, ...]
    source: str


# --------------------------------------------------------------------------- images


def load_images(source: Path | None, count: int) -> ImageSet:
    """`count` images from `source` (directory or tarball), else from the embedded demo set."""
    if count < 1:
        raise UserError(f"--image-count must be at least 1, got {count}")
    if source is None:
        return ImageSet(tuple(_demo_images(count)), "embedded demo set (drawn shapes, PNG)")
    if source.is_dir():
        found = _round_robin(_directory_groups(source, count), count)
    elif source.is_file() and tarfile.is_tarfile(source):
        found = _round_robin(_tarball_groups(source, count), count)
    elif source.exists():
        raise UserError(f"--images {source}: neither a directory nor a tar archive")
    else:
        raise UserError(f"--images {source}: no such file or directory")
    if not found:
        raise UserError(f"--images {source}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return ImageSet(tuple(found), f"{source} ({len(found)} files)")


def _image(name: str, data: bytes) -> Image:
    return Image(name, data, _CONTENT_TYPES[Path(name).suffix.lower()])


def _directory_groups(root: Path, per_group: int) -> dict[str, list[Image]]:
    groups: dict[str, list[Image]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        group = groups.setdefault(str(path.parent), [])
        if len(group) < per_group:
            group.append(_image(path.name, path.read_bytes()))
    return groups


def _tarball_groups(path: Path, per_group: int) -> dict[str, list[Image]]:
    groups: dict[str, list[Image]] = {}
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            name = Path(member.name)
            if not member.isfile() or name.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            group = groups.setdefault(str(name.parent), [])
            if len(group) < per_group:
                handle = archive.extractfile(member)
                if handle is not None:
                    group.append(_image(name.name, handle.read()))
    return groups


def _round_robin(groups: dict[str, list[Image]], count: int) -> list[Image]:
    """One image of each folder in turn (sorted folders), until `count`."""
    ordered = [groups[key] for key in sorted(groups)]
    taken: list[Image] = []
    for rank in range(max((len(g) for g in ordered), default=0)):
        for group in ordered:
            if rank < len(group):
                taken.append(group[rank])
                if len(taken) == count:
                    return taken
    return taken


def _demo_images(count: int) -> list[Image]:
    from PIL import Image as PILImage

    from training.demo_data import DEMO_LABELS, generate_demo

    arrays, labels = generate_demo(count, seed=20_233)
    images: list[Image] = []
    for i, (array, label) in enumerate(zip(arrays, labels, strict=True)):
        buffer = io.BytesIO()
        PILImage.fromarray(array).save(buffer, format="PNG")
        images.append(Image(f"{DEMO_LABELS[int(label)]}_{i}.png", buffer.getvalue(), "image/png"))
    return images


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Target:
    """A model as the requests address it."""

    dataset: str
    model: str
    height: int
    width: int
    channels: int

    @property
    def predict_path(self) -> str:
        return f"/predict/{self.dataset}/{self.model}"

    @property
    def v2_path(self) -> str:
        return f"/v2/models/{self.dataset}.{self.model}/infer"


def _request(host: str, path: str, headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def multipart_body(images: Sequence[Image]) -> bytes:
    """A multipart/form-data body with one `file` field per image."""
    parts: list[bytes] = []
    for image in images:
        if BOUNDARY.encode() in image.data:
            raise UserError(f"image {image.name} contains the multipart boundary")
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{image.name}"\r\nContent-Type: {image.content_type}\r\n\r\n'.encode()
            + image.data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def _v2_request(host: str, target: Target, tensor: Mapping[str, object], data: bytes) -> bytes:
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(data)}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    ).encode()
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("Inference-Header-Content-Length", str(len(header))),
    ]
    return _request(host, target.v2_path, headers, header + data)


def build_requests(
    kind: str,
    host: str,
    target: Target,
    images: Sequence[Image],
    *,
    pixels: Sequence[bytes] = (),
    multi: int = 8,
) -> tuple[tuple[bytes, ...], int]:
    """The requests of `kind`, one starting at each image, and the images each carries.

    `pixels` are the images decoded to the model's input (`H * W * C` uint8 bytes each), which
    `v2-uint8` sends.
    """
    if kind == "single":
        content = f"multipart/form-data; boundary={BOUNDARY}"
        built = [
            _request(host, target.predict_path, [("Content-Type", content)], multipart_body([i]))
            for i in images
        ]
        return tuple(built), 1
    if kind == "multi":
        content = f"multipart/form-data; boundary={BOUNDARY}"
        rotated = [*images, *images[: multi - 1]]
        built = [
            _request(
                host,
                target.predict_path,
                [("Content-Type", content)],
                multipart_body(rotated[start : start + multi]),
            )
            for start in range(len(images))
        ]
        return tuple(built), multi
    if kind == "raw":
        built = [
            _request(host, target.predict_path, [("Content-Type", i.content_type)], i.data)
            for i in images
        ]
        return tuple(built), 1
    if kind == "v2-uint8":
        if len(pixels) != len(images):
            raise ValueError("v2-uint8 needs the decoded pixels of every image")
        shape = [1, target.height, target.width, target.channels]
        tensor = {"name": "image", "shape": shape, "datatype": "UINT8"}
        return tuple(_v2_request(host, target, tensor, p) for p in pixels), 1
    if kind == "v2-bytes":
        tensor = {"name": "image", "shape": [1], "datatype": "BYTES"}
        built = [
            _v2_request(host, target, tensor, struct.pack("<I", len(i.data)) + i.data)
            for i in images
        ]
        return tuple(built), 1
    raise ValueError(f"unknown request kind {kind!r}")


# --------------------------------------------------------------------------- answers


def check_answer(kind: str, answer: bytes, images_per_request: int, num_classes: int) -> str | None:
    """None when a 2xx answer (head + body) is a full prediction for `kind`, else why not."""
    head, _, body = answer.partition(b"\r\n\r\n")
    try:
        if kind.startswith("v2-"):
            length = _header(head, b"inference-header-content-length")
            if length is None:
                return "no Inference-Header-Content-Length: logits not sent in binary"
            output = json.loads(body[: int(length)])["outputs"][0]
            if output["name"] != "logits" or output["shape"] != [images_per_request, num_classes]:
                return f"unexpected output {output['name']} {output['shape']}"
            if output["parameters"]["binary_data_size"] != 4 * images_per_request * num_classes:
                return "binary logits of the wrong size"
            return None
        answer_json = json.loads(body)
        predictions = answer_json["predictions"]
        if not predictions or not {"label", "index", "probability"} <= set(predictions[0]):
            return "no predictions in the answer"
        results = answer_json.get("results")
        if results is not None and len(results) != images_per_request:
            return f"{len(results)} results for {images_per_request} images"
        if results is None and images_per_request != 1:
            return "a multi-image answer without results"
        return None
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return f"unreadable answer ({type(exc).__name__})"


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None
