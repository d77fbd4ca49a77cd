"""MkDocs hooks (``hooks:`` in mkdocs.yml): the site pages generated from the repository at build time.

- ``cli.md``: every command's ``--help``, rendered from the typer app (``toolbox --help`` imports no
  torch, so neither does this).
- ``benchmarks.md``: BENCHMARKS.md with its links rewritten from the repository root to the site.
- Docstrings rendered by mkdocstrings lose their Sphinx roles (``:class:`X``` shows as ``X``) and
  the ``::`` before a literal block becomes ``:``.
- In every docs page, a GitHub-style link to ``../BENCHMARKS.md`` points at ``benchmarks.md``, so one
  link works both on GitHub and on the site (tests/test_doc_links.py checks the GitHub side).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
#: Links from the repository root to the site: ``docs/x`` lives at ``x``, BENCHMARKS.md is generated.
ROOT_LINK = re.compile(r"\]\(docs/")
PARENT_BENCHMARKS = re.compile(r"\]\(\.\./BENCHMARKS\.md")
#: Sphinx roles in docstrings (``:class:`X```): the site shows the code, not the role.
SPHINX_ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|exc|obj):(?=<code>)")


def command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of the click ``group`` as its words (``("plugins", "list")``), in listed order."""
    import click

    paths = []
    for name, command in group.commands.items():
        if getattr(command, "hidden", False):
            continue
        if isinstance(command, click.Group):
            paths += [(*prefix, name)] + command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def help_text(args: list[str]) -> str:
    """The plain-text ``toolbox ARGS --help`` at 100 columns."""
    from typer.testing import CliRunner

    from toolbox.cli.commands import app

    plain = {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
    result = CliRunner().invoke(app, [*args, "--help"], prog_name="toolbox", env=plain)
    if result.exit_code != 0:
        raise RuntimeError(f"toolbox {' '.join(args)} --help exited {result.exit_code}: {result.output}")
    return result.output.rstrip()


def cli_reference() -> str:
    """The CLI reference page: ``toolbox --help`` then every command's, each under its own heading."""
    import typer

    from toolbox.cli.commands import app

    os.environ.setdefault("COLUMNS", "100")
    parts = ["# Command line\n",
             "Generated at build time from the commands' own `--help` (`toolbox COMMAND --help` prints the "
             "same). `toolbox run --plugins NAMES --help` adds a panel of options per plugin.\n",
             "```text\n" + help_text([]) + "\n```\n"]
    for path in command_paths(typer.main.get_command(app)):
        parts.append(f"## toolbox {' '.join(path)}\n\n```text\n{help_text(list(path))}\n```\n")
    return "\n".join(parts)


def benchmarks_page() -> str:
    """BENCHMARKS.md with its ``docs/...`` links made relative to the site."""
    return ROOT_LINK.sub("](", (ROOT / "BENCHMARKS.md").read_text())


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, "cli.md", content=cli_reference()))
    files.append(File.generated(config, "benchmarks.md", content=benchmarks_page()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Point the GitHub-style ``../BENCHMARKS.md`` links of a docs page at the generated page."""
    return PARENT_BENCHMARKS.sub("](benchmarks.md", markdown)


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """Drop the Sphinx roles and the literal-block ``::`` that docstrings carry into the API page."""
    return SPHINX_ROLE.sub("", html).replace("::</p>", ":</p>")
