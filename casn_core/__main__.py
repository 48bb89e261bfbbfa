"""``python -m casn_core``: see :mod:`casn_core.cli`."""
from casn_core.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
