#!/usr/bin/env bash
# `make test-deploy`: build the serve image on a real Docker engine, run the API and Prometheus
# with docker compose, POST real images to the containerised API, check Prometheus scraped it,
# and tear everything down, also on failure. Needs root and apt (Debian bookworm); no registry:
# the base images are debootstrapped (deploy/build-base-images.sh), the wheels downloaded on
# the host (deploy/build-wheelhouse.sh). Every wait is bounded. docs/deploy.md has the figures.
#
# Environment: IMGZOO_DEPLOY_CACHE (default /var/cache/imgzoo-deploy) keeps the debootstrap
# tarballs and the demo model repository between runs; IMGZOO_DEPLOY_KEEP=1 leaves the stack
# running for inspection; PYTHON (default .venv/bin/python) trains the demo model on the host.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${IMGZOO_DEPLOY_CACHE:-/var/cache/imgzoo-deploy}
PYTHON=${PYTHON:-.venv/bin/python}
BASE_IMAGE=${IMGZOO_PYTHON_BASE:-imgzoo/bookworm-python:local}
PROMETHEUS_IMAGE=${IMGZOO_PROMETHEUS_IMAGE:-imgzoo/prometheus:local}
SERVE_IMAGE=imgzoo/serve:deploy-test
PROJECT=imgzoo-deploy-test-$$
# Debian's client matches the engine and builds with BuildKit without the buildx plugin (which
# skips the train stages the serve target does not need).
DOCKER=/usr/bin/docker
export DOCKER IMGZOO_DEPLOY_CACHE=$CACHE IMGZOO_PYTHON_BASE=$BASE_IMAGE \
  IMGZOO_PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
started=$SECONDS
step() { printf '\n[test-deploy %4ds] %s\n' $((SECONDS - started)) "$*"; }
die() { echo "test-deploy: error: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (apt-get, dockerd, debootstrap)"
[[ -x $PYTHON ]] || die "$PYTHON is missing (make install)"

step "system packages: docker.io, docker-compose, debootstrap"
missing=()
[[ -x /usr/sbin/dockerd && -x $DOCKER ]] || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

step "docker engine"
dockerd_pid=
if ! timeout 10 "$DOCKER" info >/dev/null 2>&1; then
  mkdir -p "$CACHE"
  /usr/sbin/dockerd --host unix:///var/run/docker.sock >"$CACHE/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do
    timeout 5 "$DOCKER" info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { tail -20 "$CACHE/dockerd.log" >&2; die "dockerd exited"; }
    sleep 1
  done
  timeout 5 "$DOCKER" info >/dev/null 2>&1 || die "dockerd not answering after 60 s ($CACHE/dockerd.log)"
fi
"$DOCKER" version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'

compose() { timeout "${COMPOSE_TIMEOUT:-300}" docker-compose -p "$PROJECT" \
  -f docker-compose.yml -f deploy/compose.test.yml "$@"; }
teardown() {
  local rc=$?
  set +e
  if ((rc != 0)); then
    echo "test-deploy: FAILED (exit $rc); logs of the stack:" >&2
    COMPOSE_TIMEOUT=60 compose logs --no-color --tail 60 >&2 2>&1
  fi
  if [[ ${IMGZOO_DEPLOY_KEEP:-0} == 1 ]]; then
    echo "IMGZOO_DEPLOY_KEEP=1: stack $PROJECT left running" >&2
  else
    COMPOSE_TIMEOUT=120 compose down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1
    [[ -n $dockerd_pid ]] && kill "$dockerd_pid" 2>/dev/null && wait "$dockerd_pid" 2>/dev/null
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

step "base images (cached in $CACHE)"
bash deploy/build-base-images.sh

step "wheelhouse for the serve image"
mkdir -p "$CACHE"
if ! PYTHON=$PYTHON timeout 900 bash deploy/build-wheelhouse.sh serve onnxruntime >"$CACHE/wheelhouse.log" 2>&1; then
  tail -20 "$CACHE/wheelhouse.log" >&2
  die "filling the wheelhouse failed"
fi
tail -1 "$CACHE/wheelhouse.log"

step "demo model repository (trained on the host, cached while export/ and the manifest are unchanged)"
key=$(cat imgzoo/manifest.py export/*.py | sha256sum | cut -c1-16)
demo=$CACHE/demo-$key
if [[ ! -f $demo/.complete ]]; then
  rm -rf "$demo"
  mkdir -p "$demo"
  timeout 1500 "$PYTHON" -m imgzoo.cli demo --no-serve --no-progress --repository "$demo/repository" \
    --runs "$demo/runs" --samples "$demo/samples"
  rm -rf "$demo/runs"
  touch "$demo/.complete"
fi
ls "$demo/repository"/*/*/

step "build the serve image (CPU onnxruntime, base $BASE_IMAGE)"
build_started=$SECONDS
DOCKER_BUILDKIT=1 timeout 1200 "$DOCKER" build --progress=plain --target serve \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg ORT_PACKAGE=onnxruntime \
  -t "$SERVE_IMAGE" . >"$CACHE/build.log" 2>&1 || { tail -40 "$CACHE/build.log" >&2; die "docker build failed"; }
build_s=$((SECONDS - build_started))
size=$("$DOCKER" image inspect --format '{{.Size}}' "$SERVE_IMAGE")
echo "built $SERVE_IMAGE in ${build_s} s, $((size / 1000000)) MB"

step "docker-compose up api prometheus (project $PROJECT)"
export IMGZOO_IMAGE=$SERVE_IMAGE IMGZOO_MODELS=$demo/repository \
  IMGZOO_API_PUBLISH=127.0.0.1: IMGZOO_PROMETHEUS_PUBLISH=127.0.0.1:
compose config --quiet
compose up --detach --no-build api prometheus
api_id=$(compose ps -q api)
for _ in $(seq 90); do
  health=$("$DOCKER" inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$api_id")
  [[ $health == "running healthy" ]] && break
  [[ $health == running* ]] || die "api container is $health"
  sleep 2
done
[[ $health == "running healthy" ]] || die "api not healthy within 180 s ($health)"
echo "api: $health"

step "container hardening"
uid=$("$DOCKER" exec "$api_id" id -u)
[[ $uid != 0 ]] || die "the API runs as root"
if "$DOCKER" exec "$api_id" touch /models/.write-probe 2>/dev/null; then
  die "the model repository is writable from the container"
fi
if "$DOCKER" exec "$api_id" python3 -c "import torch" 2>/dev/null; then die "torch in the serve image"; fi
echo "uid $uid, /models read-only, no torch"

api_url=http://$(compose port api 8000 | tail -1)
prometheus_url=http://$(compose port prometheus 9090 | tail -1)
[[ $api_url == http://127.0.0.1:* && $prometheus_url == http://127.0.0.1:* ]] \
  || die "ports not bound to 127.0.0.1: $api_url $prometheus_url"

step "checks against $api_url and $prometheus_url"
"$PYTHON" deploy/check_deploy.py --api "$api_url" --prometheus "$prometheus_url" \
  --samples "$demo/samples" --dataset demo --model fastnet --timeout 120

step "passed in $((SECONDS - started)) s (image build ${build_s} s, image $((size / 1000000)) MB)"
