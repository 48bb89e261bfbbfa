"""The ``casn`` console command: the library's commands (:mod:`casn_core.commands`) and ``casn app``.

It lives in the app package because the app sits above the library: ``casn app ...`` is
``python app.py ...`` (the app parses its own options), everything else is passed to the library.
"""
from __future__ import annotations

import sys

from casn_core.commands import Command, build_parser
from casn_core.commands import main as library_main

APP = Command("app", "the Gradio explainability app (same options as `python app.py`)", "")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == APP.name:
        import app.offline  # noqa: F401  (network switches before gradio is imported)
        from app.server import main as app_main

        return app_main(argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        build_parser(extra=(APP,)).parse_args(argv)  # prints the usage with the app listed
    return library_main(argv)


if __name__ == "__main__":
    sys.exit(main())
