"""The Open Inference Protocol (KServe v2, as spoken by Triton's clients) under `/v2`.

`router` carries every route; `service.app` includes it. Models are named `<dataset>.<model>`
(`names`), requests and answers are JSON with the binary-tensor-data extension (`codec`), and
inference runs through the same batchers, decoding and metrics as `/predict` (`inference`).
"""

from service.v2.router import router

__all__ = ["router"]
