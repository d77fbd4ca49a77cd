"""``python -m toolbox.cli``: the ``toolbox`` command."""

from toolbox.cli import main

main()
