#!/usr/bin/env bash
# Installs the Debian packages that integration tests drive for real, when we can:
#   prometheus -> promtool (checks the live /metrics output)
#   chromium + chromium-driver -> the web page tested in a real headless browser
#   hey -> issue 7's HTTP load generator, `imgzoo bench serve --client hey`
#   libtcmalloc-minimal4 -> the allocator CPU training runs faster with (training/host.py)
# Without root or apt the tests that need them skip with a reason.
set -euo pipefail
packages=(prometheus chromium chromium-driver hey libtcmalloc-minimal4)
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v hey >/dev/null 2>&1 || missing+=(hey)
# grep without -q reads all of ldconfig's output: no SIGPIPE for pipefail to catch.
[ -n "$(/sbin/ldconfig -p 2>/dev/null | grep 'libtcmalloc_minimal\.so\.4 ')" ] || missing+=(libtcmalloc-minimal4)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: not root or no apt-get; tests needing ${missing[*]} will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]} (wanted: ${packages[*]})"
