#!/bin/bash
# Runs inside the Dockerfile's build stages (docs/deploy.md).
#   image-pip-install.sh deps     install /src/requirements.txt (constrained)
#   image-pip-install.sh project  install the project in /src, without dependencies
# From /wheels alone when it holds wheels (deploy/build-wheelhouse.sh), else from PyPI.
set -euo pipefail
index=()
if compgen -G "/wheels/*.whl" >/dev/null; then
  index=(--no-index --find-links /wheels)
fi
case ${1:-} in
  deps) exec pip install "${index[@]}" -c /src/requirements/constraints.txt -r /src/requirements.txt ;;
  project) exec pip install "${index[@]}" --no-deps /src ;;
  *) echo "usage: image-pip-install.sh deps|project" >&2; exit 2 ;;
esac
