"""Print the pip requirements of the container images, read from pyproject.toml.

One source of truth for the host (filling the wheelhouse) and the Dockerfile (installing from
it): the base dependencies plus the dependencies of the named extras, one per line, with
`onnxruntime` swapped for the ONNX Runtime package the image wants (`onnxruntime-gpu[...]` for
the GPU serve image). Standard library only: it runs on the bare base image.

    python3 deploy/requirements.py pyproject.toml serve --ort 'onnxruntime-gpu[cuda,cudnn]'
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(requirement: str) -> str:
    """The normalised project name of a requirement string (PEP 503)."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def swap_onnxruntime(requirement: str, ort_package: str) -> str:
    """`ort_package`, keeping the project's version bound when `ort_package` names none.

    `onnxruntime>=1.18` with `onnxruntime-gpu[cuda,cudnn]` gives
    `onnxruntime-gpu[cuda,cudnn]>=1.18`.
    """
    if any(char in ort_package for char in "<>=!~@;"):
        return ort_package
    match = _NAME.match(requirement)
    assert match is not None  # requirement_name() accepted it
    bound = requirement[match.end() :].strip()
    return f"{ort_package}{bound}"


def requirements(pyproject: Path, extras: list[str], ort_package: str) -> list[str]:
    """Base dependencies + those of `extras`, deduplicated, ONNX Runtime as `ort_package`."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"requirements.py: error: unknown extra(s): {', '.join(unknown)}")
    lines: list[str] = []
    seen: set[str] = set()
    declared = [*project.get("dependencies", []), *(r for e in extras for r in optional[e])]
    for requirement in declared:
        name = requirement_name(requirement)
        line = requirement
        if name == "onnxruntime":
            line = swap_onnxruntime(requirement, ort_package)
            name = requirement_name(ort_package)
        if name not in seen:
            seen.add(name)
            lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("extras", nargs="+", help="extras of pyproject.toml, e.g. serve")
    parser.add_argument(
        "--ort", default="onnxruntime", help="ONNX Runtime requirement (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    lines = requirements(args.pyproject, args.extras, args.ort)
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
