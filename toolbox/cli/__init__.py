"""The command line: the typer app and its commands (thin: parse, call, print), the run help page,
``toolbox check`` and the console (progress bars, log lines, tables).

May import: everything. Nothing outside ``cli`` imports it.
"""

from __future__ import annotations


def main() -> None:
    """Console-script entry point (``toolbox``; also ``python -m toolbox.cli``)."""
    from toolbox.cli.commands import main as run_main

    run_main()
