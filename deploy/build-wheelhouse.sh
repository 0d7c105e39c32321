#!/usr/bin/env bash
# Fill deploy/wheels/<target>/ with every wheel the image target needs, downloaded on the host
# for the image's Python (3.11, CPython, glibc Linux of this machine's architecture), so the
# Dockerfile installs with `pip install --no-index` and no network inside the build.
#
#   deploy/build-wheelhouse.sh serve [ORT_PACKAGE]   default ORT_PACKAGE: onnxruntime
#   deploy/build-wheelhouse.sh train [ORT_PACKAGE]   torch and its CUDA wheels: several GB
#
# Re-running is a no-op while the requirements are unchanged. PYTHON picks the pip to use (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:?usage: build-wheelhouse.sh serve|train [ORT_PACKAGE]}
ort=${2:-onnxruntime}
case $target in serve | train) ;; *) echo "unknown target: $target" >&2; exit 2 ;; esac
python=${PYTHON:-python3}
dest=deploy/wheels/$target
arch=$(uname -m)
mkdir -p "$dest"

requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
"$python" deploy/requirements.py pyproject.toml "$target" --ort "$ort" >"$requirements"
# setuptools + wheel: the image builds the project's own wheel from /src with build isolation.
printf '%s\n' 'setuptools>=77' 'wheel' >>"$requirements"

# Skip the index when this exact requirement set was downloaded before (IMGZOO_REFRESH_WHEELS=1
# asks again, e.g. for newer releases).
stamp="$dest/.requirements.sha256"
digest=$(cat "$requirements" requirements/constraints.txt | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$digest" && ${IMGZOO_REFRESH_WHEELS:-0} != 1 ]]; then
  echo "$dest: up to date ($(find "$dest" -name '*.whl' | wc -l) wheels)"
  exit 0
fi

# Bookworm has glibc 2.36: any manylinux wheel up to 2_36 runs in the image. pip does not
# widen one --platform to older glibc versions, so every tag is listed.
platforms=(--platform "manylinux2014_$arch")
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
"$python" -m pip download --quiet --disable-pip-version-check \
  --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
  "${platforms[@]}" \
  -c requirements/constraints.txt -r "$requirements" -d "$dest"
echo "$digest" >"$stamp"
echo "$dest: $(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1)"
