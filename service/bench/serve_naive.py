"""The naive baselines of `imgzoo bench serve`: a FastAPI server as the tutorials write it.

One forward per request, no batching: `UploadFile` reads the multipart `file`, Pillow decodes
and resizes it, the model runs inside the `async` handler, the top 5 go back as JSON. Two
backends behind the same app:

- `torch`: the PyTorch network in eager mode (the checkpoint's architecture and weights,
  wrapped exactly as the export wraps it: uint8 NHWC -> normalise -> network);
- `ort`: the exported `model.onnx` in one ONNX Runtime session with `--threads` threads and
  otherwise ONNX Runtime's defaults, as a tutorial leaves them (idle threads spin).

    python -m service.bench.serve_naive --backend torch --port 8001 --threads 2 \\
        --model cifar10/fastnet=fastnet.pt

`--model dataset/name=PATH` (repeatable) is a checkpoint for `torch`, a version directory of a
model repository for `ort`; requests go to `POST /predict/<dataset>/<name>`, as on imgzoo.
`GET /healthz` answers once every model is loaded and has run once.
"""

# No `from __future__ import annotations`: FastAPI reads the handler's annotations at run time,
# and `UploadFile` is imported inside `build_app`, not at module level.

import argparse
import io
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from imgzoo.errors import UserError
from imgzoo.names import is_valid_name

TOP_K = 5
_WARMUP_RUNS = 5  # PyTorch's first calls allocate and pick kernels; not part of a measurement
BACKENDS = ("torch", "ort")

Predictor = Callable[[bytes], list[dict[str, Any]]]


def _pixels(data: bytes, height: int, width: int, channels: int) -> npt.NDArray[np.uint8]:
    """Decode and resize as a tutorial does: Pillow, convert, resize to the input size."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB" if channels == 3 else "L")
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.array(image, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants
    return array if channels == 3 else array[..., None]


def _top_k(
    probabilities: npt.NDArray[np.floating[Any]], labels: Sequence[str]
) -> list[dict[str, Any]]:
    order = np.argsort(-probabilities, kind="stable")[:TOP_K]
    return [
        {"label": labels[i], "index": int(i), "probability": float(probabilities[i])} for i in order
    ]


def torch_predictor(checkpoint: Path) -> Predictor:
    """Eager PyTorch: the checkpoint's network behind the export's uint8 NHWC wrapper."""
    import torch

    from export.wrapper import wrapper_for
    from training.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    info = loaded.data
    model = wrapper_for(loaded.build_model(), info)

    def predict(data: bytes) -> list[dict[str, Any]]:
        x = torch.from_numpy(_pixels(data, info.height, info.width, info.channels)).unsqueeze(0)
        with torch.no_grad():
            probabilities = torch.softmax(model(x), dim=1)[0]
        return _top_k(probabilities.numpy(), info.labels)

    return predict


def ort_predictor(version_dir: Path, threads: int) -> Predictor:
    """One ONNX Runtime session with ORT's default spinning; one run per image."""
    from imgzoo.manifest import INPUT_NAME, ONNX_FILENAME, OUTPUT_NAME, load_manifest
    from service.runtime import CPU, SessionSpec, create_ort_session

    manifest = load_manifest(version_dir)
    spec = manifest.input
    session = create_ort_session(
        (version_dir / ONNX_FILENAME).read_bytes(),
        SessionSpec(providers=(CPU,), intra_op_threads=threads, spinning=True),
    )

    def predict(data: bytes) -> list[dict[str, Any]]:
        x = _pixels(data, spec.height, spec.width, spec.channels)[None]
        logits = np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0][0], dtype=np.float64)
        e = np.exp(logits - logits.max())
        return _top_k(e / e.sum(), manifest.labels)

    return predict


def build_app(predictors: dict[tuple[str, str], Predictor]) -> Any:
    """The tutorial-style FastAPI app serving `predictors` at /predict/<dataset>/<model>."""
    from fastapi import FastAPI, File, HTTPException, UploadFile

    app = FastAPI(title="naive baseline")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/predict/{dataset}/{model}")
    async def predict(dataset: str, model: str, file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008
        predictor = predictors.get((dataset, model))
        if predictor is None:
            raise HTTPException(status_code=404, detail=f"no model {dataset}/{model}")
        data = await file.read()
        try:
            predictions = predictor(data)
        except (OSError, ValueError) as exc:  # Pillow: not an image
            raise HTTPException(status_code=422, detail="invalid image") from exc
        return {"dataset": dataset, "model": model, "predictions": predictions}

    return app


def parse_model(text: str) -> tuple[str, str, Path]:
    """`dataset/name=PATH` -> (dataset, name, PATH)."""
    names, sep, path = text.partition("=")
    dataset, slash, model = names.partition("/")
    if not (sep and slash and path and is_valid_name(dataset) and is_valid_name(model)):
        raise UserError(f"--model {text!r}: expected dataset/name=PATH")
    return dataset, model, Path(path)


def load_predictors(
    backend: str, models: Sequence[str], threads: int
) -> dict[tuple[str, str], Predictor]:
    """Every `--model`, loaded and run a few times (the first calls of a runtime are slow)."""
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
    predictors: dict[tuple[str, str], Predictor] = {}
    for text in models:
        dataset, model, path = parse_model(text)
        predictor = torch_predictor(path) if backend == "torch" else ort_predictor(path, threads)
        blank = _blank_png()
        for _ in range(_WARMUP_RUNS):
            predictor(blank)
        predictors[(dataset, model)] = predictor
    return predictors


def _blank_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (127, 127, 127)).save(buffer, format="PNG")
    return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.bench.serve_naive", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2, help="torch / ORT intra-op threads")
    parser.add_argument("--model", action="append", required=True, help="dataset/name=PATH")
    args = parser.parse_args(argv)
    try:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        predictors = load_predictors(args.backend, args.model, args.threads)
    except UserError as exc:
        print(f"serve_naive: error: {exc}", file=sys.stderr)
        return exc.exit_code
    import uvicorn

    uvicorn.run(
        build_app(predictors),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
