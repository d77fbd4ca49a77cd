"""What ``toolbox plugins list`` and ``toolbox plugins show`` print: plugins described in plain text.

Docstrings are written in reST for the API reference; the terminal gets them without the markup
(````x```` -> x, ``:mod:`a.b``` -> a.b, ``:class:`~a.b.C``` -> C), paragraphs rewrapped to its width
and the options listed as in ``toolbox run --help`` (flags never cut).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
from typing import Any

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``")
_INTERPRETED = re.compile(r"(?<![`\w])`([^`]+)`(?:_)?")
_EMPHASIS = re.compile(r"(?<![\w*])\*(\S[^*]*?)\*(?![\w*])")
_LIST_ITEM = re.compile(r"^(?:[-*+] |\d+[.)] |\S+ +-- )")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "al.", "vs.", "cf.")


def _role_text(match: re.Match[str]) -> str:
    """The text a reST role shows: ``~a.b.C`` -> C, ``text <target>`` -> text, else the target."""
    target = match.group(1).strip()
    titled = re.fullmatch(r"(.+?)\s*<[^>]+>", target)
    if titled:
        return titled.group(1)
    return target.lstrip("~").rsplit(".", 1)[-1] if target.startswith("~") else target.lstrip("!")


def plain_text(doc: str) -> str:
    """``doc`` (reST) as plain text: roles and literals without markup, each paragraph on one line
    (list items and indented blocks keep their lines), paragraphs separated by a blank line."""
    text = _ROLE.sub(_role_text, doc)
    text = _LITERAL.sub(r"\1", text)
    text = _INTERPRETED.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text.replace("**", ""))
    text = text.replace("::\n", ":\n")
    paragraphs = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        if all(line.startswith("    ") for line in lines):  # a literal block: as it is
            paragraphs.append("\n".join(lines))
            continue
        joined: list[str] = []
        for line in lines:
            if joined and not _LIST_ITEM.match(line.strip()) and not line.startswith("    "):
                joined[-1] += " " + line.strip()
            else:
                joined.append(line.rstrip())
        paragraphs.append("\n".join(joined))
    return "\n\n".join(paragraphs)


def first_sentence(text: str) -> str:
    """The first sentence of the first paragraph of plain ``text``."""
    paragraph = text.strip().split("\n\n")[0].replace("\n", " ")
    for end in _SENTENCE_END.finditer(paragraph):
        if not paragraph[:end.start()].lower().endswith(_ABBREVIATIONS):
            return paragraph[:end.start()].strip()
    return paragraph.strip()


def description(name: str, obj: Any) -> str:
    """One line saying what plugin ``name`` (class or module ``obj``) does: :func:`describe` of
    its docstrings."""
    module_doc = inspect.getdoc(inspect.getmodule(obj)) if inspect.isclass(obj) else None
    return describe(name, module_doc, inspect.getdoc(obj))


def source_docs(value: str) -> tuple[str | None, str | None] | None:
    """(module docstring, docstring of the named class) of entry point ``module:Class`` read from
    the module's source without running it (so without the torch it imports); ``None`` when the
    source cannot be read or ``Class`` is not a class defined in it (then the plugin is loaded)."""
    module, _, attr = value.partition(":")
    try:
        spec = importlib.util.find_spec(module.strip())
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            return None
        with open(spec.origin, encoding="utf-8") as file:
            tree = ast.parse(file.read())
    except (ImportError, OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return None
    module_doc = ast.get_docstring(tree)
    if not attr:
        return module_doc, module_doc
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    if attr.strip() not in classes:
        return None
    return module_doc, ast.get_docstring(classes[attr.strip()])


def describe(name: str, module_doc: str | None, own: str | None) -> str:
    """One line saying what plugin ``name`` does: its module docstring's first sentence when that
    starts with ````name````: (the built-ins' style), else its own docstring's."""
    module_doc, own = (inspect.cleandoc(d) if d else d for d in (module_doc, own))
    prefix = re.compile(rf"^``{re.escape(name)}``\s*:\s*")
    for doc in (module_doc if module_doc and prefix.match(module_doc) else None, own, module_doc):
        if doc:
            sentence = first_sentence(plain_text(prefix.sub("", doc)))
            return sentence[:1].upper() + sentence[1:]
    return "(no description)"


def plugins_table() -> Any:
    """The table of ``toolbox plugins list``: name, source and what each installed plugin does,
    read from each plugin's source where it can be (:func:`source_docs`: no plugin is imported, so
    neither is torch); a plugin that fails to import shows it in ``toolbox plugins show NAME`` and
    ``toolbox run``."""
    from rich.table import Table
    from rich.text import Text

    from toolbox.plugin_host.entry_points import available_plugins, load_entry_point

    table = Table(title="toolbox plugins", caption="hooks and options: toolbox plugins show NAME")
    table.add_column("name", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("what it does", ratio=1)
    for name, info in available_plugins().items():
        try:
            docs = source_docs(info.value)
            what = describe(name, *docs) if docs is not None else description(name, load_entry_point(name))
        except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not hide the others
            what = f"(failed to load: {exc})"
        table.add_row(name, info.source, Text(what))
    return table


def show_plugin(name: str, console: Any) -> None:
    """Print installed plugin ``name``: source, docstrings as plain text (the plugin's, then its
    module's), hooks and its options as ``toolbox run --help`` lists them (``toolbox plugins show
    NAME``); an unknown name is a :class:`UsageError` listing the known ones."""
    from rich.text import Text

    from toolbox.cli.help import options_panel, plugin_options
    from toolbox.errors import UsageError
    from toolbox.plugin_host.entry_points import available_plugins, instantiate, load_entry_point
    from toolbox.plugin_host.manager import hooks_of

    installed = available_plugins()
    if name not in installed:
        raise UsageError(f"Unknown plugin {name!r}; known plugins: {', '.join(installed) or 'none installed'}.")
    obj = load_entry_point(name)
    plugin = instantiate(obj)
    say = lambda text: console.print(Text(text), soft_wrap=False)  # noqa: E731  (wrapped at words)
    say(f"{name} ({installed[name].source}: {installed[name].value})")
    say("")
    docs = [inspect.getdoc(obj), inspect.getdoc(inspect.getmodule(obj)) if inspect.isclass(obj) else None]
    for doc in dict.fromkeys(d for d in docs if d) or ["(no docstring)"]:
        say(plain_text(doc))
        say("")
    say("hooks: " + (", ".join(h.removeprefix("toolbox_") for h in hooks_of(plugin)) or "none"))
    options = plugin_options(name)
    if not options:
        say("options: none")
        return
    console.print(options_panel(f"options of {name} (--name VALUE or config keys)", options), soft_wrap=False)
