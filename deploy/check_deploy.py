"""Checks of deploy/test-deploy.sh against the running compose stack (standard library only).

    python3 deploy/check_deploy.py --api http://127.0.0.1:PORT --prometheus http://127.0.0.1:PORT \
        --samples DIR --dataset demo --model fastnet

1. waits (bounded) for the API's /readyz;
2. POSTs every `<label>.png` of --samples to /predict/<dataset>/<model> as multipart `file` and
   checks each answer: the model named, probabilities best first summing to about 1, and the
   top-1 label equal to the file's label for at least --min-correct of them, and checks the
   Open Inference Protocol's health and model metadata routes;
3. waits (bounded) for Prometheus to report the imgzoo-api target up, to hold `imgzoo_` series,
   and to have scraped a request count of at least the requests sent.
Exit code 0 when every check passed, 1 with the failed check on stderr otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")


class CheckError(Exception):
    """One check of the deployment did not hold."""


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    """GET (or POST `data`) and decode the JSON answer; HTTP errors raise CheckError."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()[:300].decode("utf-8", "replace")
        raise CheckError(f"{url}: HTTP {exc.code}: {body}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CheckError(f"{url}: {exc}") from None


def wait_for(what: str, probe: Callable[[], _T | None], timeout_s: float) -> _T:
    """Call `probe` every second until it returns a value; CheckError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while True:
        try:
            value = probe()
            if value is not None:
                return value
        except CheckError as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise CheckError(f"{what}: not within {timeout_s:.0f} s (last: {last})")
        time.sleep(1.0)


def multipart(field: str, filename: str, payload: bytes, content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
    ).encode()
    body = head + payload + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def check_prediction(answer: dict[str, Any], dataset: str, model: str, count: int) -> str:
    """Validate one /predict answer; returns the top-1 label."""
    if (answer.get("dataset"), answer.get("model")) != (dataset, model):
        raise CheckError(f"answer names {answer.get('dataset')}/{answer.get('model')}")
    predictions = answer.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != count:
        raise CheckError(f"expected {count} predictions, got {predictions!r:.200}")
    probabilities = [float(p["probability"]) for p in predictions]
    if probabilities != sorted(probabilities, reverse=True):
        raise CheckError(f"predictions not best first: {probabilities}")
    if abs(sum(probabilities) - 1.0) > 1e-3:
        raise CheckError(f"probabilities of all {count} classes sum to {sum(probabilities)}")
    return str(predictions[0]["label"])


def predict_samples(args: argparse.Namespace) -> int:
    """POST every sample; returns the number of requests sent."""
    samples = sorted(args.samples.glob("*.png"))
    if not samples:
        raise CheckError(f"no sample images in {args.samples}")
    url = f"{args.api}/predict/{args.dataset}/{args.model}?top_k={len(samples)}"
    correct = []
    for sample in samples:
        body, content_type = multipart("file", sample.name, sample.read_bytes(), "image/png")
        answer = http(url, body, {"Content-Type": content_type})
        label = check_prediction(answer, args.dataset, args.model, len(samples))
        print(f"  {sample.name}: {label} ({answer['predictions'][0]['probability']:.3f})")
        if label == sample.stem:
            correct.append(sample.stem)
    print(f"  top-1 correct: {len(correct)}/{len(samples)}")
    if len(correct) < args.min_correct:
        raise CheckError(f"only {len(correct)} of {len(samples)} samples classified correctly")
    return len(samples)


def check_open_inference_protocol(args: argparse.Namespace) -> None:
    """The KServe v2 routes the InferenceService relies on (deploy/k8s/inferenceservice.yaml)."""
    live = http(f"{args.api}/v2/health/live")
    if live != {"live": True}:
        raise CheckError(f"/v2/health/live answered {live}")
    name = f"{args.dataset}.{args.model}"
    metadata = http(f"{args.api}/v2/models/{name}")
    inputs = [spec.get("name") for spec in metadata.get("inputs", [])]
    if metadata.get("name") != name or inputs != ["image"]:
        raise CheckError(f"/v2/models/{name}: {metadata!r:.300}")
    print(f"  /v2/models/{name}: versions {metadata.get('versions')}, inputs {inputs}")


def prometheus_query(base: str, query: str) -> list[dict[str, Any]]:
    answer = http(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}")
    if answer.get("status") != "success":
        raise CheckError(f"query {query!r}: {answer}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def check_prometheus(args: argparse.Namespace, sent: int) -> None:
    def target_up() -> str | None:
        targets = http(f"{args.prometheus}/api/v1/targets")["data"]["activeTargets"]
        ours = [t for t in targets if t["labels"].get("job") == args.job]
        if ours and all(t["health"] == "up" for t in ours):
            return str(ours[0]["scrapeUrl"])
        raise CheckError(f"targets of job {args.job}: {[t.get('health') for t in ours]}")

    print(f"  target up: {wait_for('prometheus target up', target_up, args.timeout)}")

    def series() -> int | None:
        result = prometheus_query(args.prometheus, 'count({__name__=~"imgzoo_.+"})')
        count = int(float(result[0]["value"][1])) if result else 0
        return count if count > 0 else None

    print(f"  imgzoo_ series: {wait_for('imgzoo_ series in prometheus', series, args.timeout)}")
    query = (
        f'sum(imgzoo_requests_total{{dataset="{args.dataset}",model="{args.model}",'
        f'status="200",job="{args.job}"}})'
    )

    def counted() -> float | None:
        result = prometheus_query(args.prometheus, query)
        value = float(result[0]["value"][1]) if result else 0.0
        if value >= sent:
            return value
        raise CheckError(f"{query} = {value}, want >= {sent}")

    print(f"  scraped requests: {wait_for('scraped request count', counted, args.timeout):.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="check the deployed imgzoo compose stack")
    parser.add_argument("--api", required=True, help="base URL of the API")
    parser.add_argument("--prometheus", required=True, help="base URL of Prometheus")
    parser.add_argument("--samples", type=Path, required=True, help="directory of <label>.png")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--model", default="fastnet")
    parser.add_argument("--job", default="imgzoo-api", help="Prometheus job of the API")
    parser.add_argument("--min-correct", type=int, default=6, help="top-1 hits required")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per wait")
    args = parser.parse_args(argv)
    try:
        print("readiness:")
        wait_for("API /readyz", lambda: http(f"{args.api}/readyz"), args.timeout)
        print("  ready")
        print("predictions:")
        sent = predict_samples(args)
        print("open inference protocol:")
        check_open_inference_protocol(args)
        print("prometheus:")
        check_prometheus(args, sent)
    except CheckError as exc:
        print(f"check_deploy: FAILED: {exc}", file=sys.stderr)
        return 1
    print("check_deploy: all checks passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
