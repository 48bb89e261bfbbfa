"""CASN explainability app: ``python app.py`` serves the bundled demo at http://127.0.0.1:7860.

    python app.py                                   # bundled checkpoint + generated demo set
    python app.py --checkpoint CKPT --data DIR      # any Market-layout dataset (features cached)
    python app.py --host 0.0.0.0 --port 8080 --topk 20 [--share]

See ``app/`` for the modules (``app/server.py`` for every option).
"""
from __future__ import annotations

import sys
import time

STARTED = time.perf_counter()  # the start-up line counts the imports below

import app.offline  # noqa: E402,F401  (network switches before anything imports gradio)
from app.server import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(started=STARTED))
