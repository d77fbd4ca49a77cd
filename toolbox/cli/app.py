"""The typer app of the ``toolbox`` command line and what every command shares.

Core flags and plugin flags share one path: every ``--name VALUE`` goes through
:func:`toolbox.options.build_options` together with the config file, so a value is parsed and
validated in one place whatever its source. User errors exit with code 2 and one sentence
(:func:`user_errors`).
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import click
import typer
from typer.core import TyperGroup

from toolbox.cli.console import error_console, is_main
from toolbox.errors import UsageError



def unwrap(text: str | None) -> str | None:
    """``text`` with the line breaks inside each paragraph joined (blank lines kept), so that the
    help wraps to the terminal: typer keeps a docstring's breaks after its first paragraph."""
    if not text:
        return text
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


class ToolboxGroup(TyperGroup):
    """A typer group whose commands' help texts have no line break inside a sentence."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = unwrap(self.help)
        for command in self.commands.values():
            command.help = unwrap(command.help)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=ToolboxGroup,
                  help="Train CNNs on accumulated new data, step by step, with plugins.")
plugins_app = typer.Typer(no_args_is_help=True, cls=ToolboxGroup, help="Inspect installed plugins.")
models_app = typer.Typer(no_args_is_help=True, cls=ToolboxGroup, help="Inspect registered backbones.")
app.add_typer(plugins_app, name="plugins")
app.add_typer(models_app, name="models")

EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
#: List options whose flag may be given several times (the values add up).
REPEATABLE = {"models_from"}


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Report errors as ``Error: <sentence>`` on stderr, no traceback.

    Exit codes: 2 for a :class:`UsageError` (bad value, bad or mismatched checkpoint), 1 for a
    non-finite loss (:class:`toolbox.run.engine.NumericError`), for a file the run could not write
    (:class:`toolbox.storage.atomic.WriteError`: full disk, permissions; earlier checkpoints intact)
    and, under torchrun, for a collective that failed because another process died or hung. In
    a multi-process run the other ranks' messages start with ``rank N:``. Any other exception (a
    bug) is one line too, exit code 1, naming the file that holds its traceback: the run's
    run.log, or a crash log (:func:`toolbox.run.log_file.save_traceback`). Ctrl-C is left as is.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from toolbox.run import log_file

        who = "" if is_main() else f"rank {_rank()}: "
        log_file.forget_last_log()
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # typer's own exits and command-line errors
        except UsageError as exc:
            error_console.print(f"Error: {who}{exc}", markup=False, highlight=False)
            raise typer.Exit(2) from None
        except Exception as exc:  # noqa: BLE001  (the last resort: a bug is one line, not a traceback)
            from toolbox.run.engine import NumericError
            from toolbox.runtime import distributed
            from toolbox.storage.atomic import WriteError

            if isinstance(exc, (NumericError, WriteError)):
                error_console.print(f"Error: {who}{exc}", markup=False, highlight=False)
                raise typer.Exit(1) from None
            if not isinstance(exc, RuntimeError) or not distributed.is_peer_failure(exc):  # DistError is one
                unexpected(exc, who)
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            error_console.print(f"Error: {who}another process of this torchrun job failed or stopped answering "
                                f"({detail}); the checkpoints written so far are intact: continue with "
                                "`toolbox run --resume <run dir>`.", markup=False, highlight=False)
            raise typer.Exit(1) from None
        finally:
            _release()

    return wrapper


def _rank() -> int:
    """This process's rank under torchrun."""
    from toolbox.runtime import distributed

    return distributed.rank()


def _release() -> None:
    """Release the run locks and the process group a command took (neither imported: none taken)."""
    if "toolbox.run.lock" in sys.modules:
        sys.modules["toolbox.run.lock"].release_all()
    if "toolbox.runtime.distributed" in sys.modules:
        sys.modules["toolbox.runtime.distributed"].destroy()


def unexpected(exc: Exception, who: str = "") -> None:
    """Report an exception no check foresaw as one line naming the file with its traceback; exit 1."""
    from toolbox.run.log_file import save_traceback

    path = save_traceback(exc)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    where = f"the full traceback is in {path}" if path is not None else "its traceback could not be saved"
    error_console.print(f"Error: {who}unexpected {type(exc).__name__}{': ' + first if first else ''}; {where}",
                        markup=False, highlight=False)
    raise typer.Exit(1) from None


def parse_extra_args(tokens: list[str]) -> dict[str, Any]:
    """``--s 1e-3 --ratio=0.5 --flag --no-other`` -> ``{"s": "1e-3", "ratio": "0.5", ...}``."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) < 3:
            raise UsageError(f"Unexpected argument {token!r}; options are written --name VALUE.")
        name, eq, value = token[2:].partition("=")
        if not eq:
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            if following is None or (following.startswith("--") and len(following) > 2):
                value = "true"
                if name.startswith("no-"):
                    name, value = name[3:], "false"
            else:
                value = following
                i += 1
        key = name.replace("-", "_")
        values[key] = f"{values[key]},{value}" if key in REPEATABLE and key in values else value
        i += 1
    return values


def merged_values(config: Optional[Path], flags: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    """Config file values, overridden by explicit flags, overridden by extra ``--name VALUE``."""
    from toolbox.options import load_config_file

    values: dict[str, Any] = load_config_file(config) if config is not None else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    values.update(parse_extra_args(extra))
    return values
