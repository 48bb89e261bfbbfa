"""``python -m casn_core COMMAND``: the library's commands (:mod:`casn_core.commands`); ``casn app`` or
``python app.py`` starts the app."""
from casn_core.commands import main

if __name__ == "__main__":
    raise SystemExit(main())
