"""A new user given only README.md: its runnable blocks (a fenced block right after the line
``<!-- runnable -->``, docs/docs-site.md) run in order in an empty folder, on tiny data.

Every ``toolbox ...`` line runs through the real command line (typer's in-process runner on
``toolbox.cli.commands.app``) with options appended that make it tiny (one epoch, two steps, a
few images; the demo on the synthetic set, so nothing is downloaded); ``pip install`` and the
virtual-environment lines are skipped, and named; the image folders the commands name are
fabricated before the block that uses them. Every command must exit 0, and the files the README
promises (run directories, served models, predictions CSVs) must exist.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from fabricate import write_image, write_image_folder
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.run import lock as runlock

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = re.compile(r"^<!-- runnable -->\n```(\w+)\n(.*?)^```", re.M | re.S)
#: Set-up lines a test inside the installed toolbox does not repeat.
SKIPPED = ("python3 -m venv", ". .venv/bin/activate", "source .venv/bin/activate", "pip install")
CLASSES = ("cat", "dog")
#: Appended to every ``toolbox run`` (the last value of a flag wins).
TINY_RUN = ["--epochs", "1", "--batch-size", "16", "--eval-batch-size", "64", "--device", "cpu", "--threads", "1"]


def runnable_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every block marked runnable, in order."""
    return [(language, code) for language, code in RUNNABLE.findall(text)]


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block: comments and blank lines dropped, ``&&`` chains split."""
    lines = [line.split(" #")[0].strip() for line in code.replace("\\\n", " ").splitlines()]
    return [part.strip() for line in lines if line and not line.startswith("#") for part in line.split("&&")]


def tiny(args: list[str]) -> list[str]:
    """``toolbox ARGS`` with the options that make it run in seconds appended."""
    if args[0] != "run":
        return args
    extra = list(TINY_RUN)
    if "--config" in args:  # the demo: the synthetic set (no download), 2 steps of 10 per class
        extra += ["--dataset", "synthetic", "--steps", "2", "--per-class", "10"]
    if "imagefolder" in args or "--shards" in args:
        extra += ["--image-size", "16"] + (["--steps", "2"] if "--data-root" in args else [])
    return args + extra


def option(args: list[str], name: str) -> str | None:
    """The value of ``--name`` in ``args``, or None."""
    return args[args.index(name) + 1] if name in args else None


@dataclass
class Walk:
    """One walk through the README in ``folder``: what ran, what was skipped, what was fabricated."""

    folder: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    fabricated: list[str] = field(default_factory=list)

    def class_folder(self, name: str, per_class: int) -> None:
        """``name/<class>/img<i>.png`` (random 28 x 28 grey images, each folder its own seed)."""
        if not (self.folder / name).exists():
            write_image_folder(self.folder / name, CLASSES, per_class=per_class, seed=len(self.fabricated) + 1)
            self.fabricated.append(name)

    def plain_folder(self, name: str) -> None:
        """``name/0001.png ...``: images to predict, without class folders."""
        if not (self.folder / name).exists():
            rng = np.random.default_rng(99)
            for i in range(1, 4):
                write_image(self.folder / name / f"{i:04d}.png", rng.integers(0, 256, (28, 28), dtype=np.uint8))
            self.fabricated.append(name)

    def fabricate_for(self, args: list[str]) -> None:
        """The image folders ``toolbox ARGS`` reads, where they do not exist yet."""
        if args[0] == "run" and "imagefolder" in args and (root := option(args, "--data-root")):
            self.class_folder(f"{root}/train", per_class=8)
            self.class_folder(f"{root}/test", per_class=4)
        for shard in (option(args, "--shards") or "").split(","):
            if shard:
                self.class_folder(shard, per_class=6)
        for name in ("--test", "--data", "--val"):
            if value := option(args, name):
                self.class_folder(value, per_class=4 if name == "--test" else 6)
        if args[0] == "predict" and len(args) > 2 and not args[2].startswith("-"):
            self.plain_folder(args[2])

    def toolbox(self, line: str) -> None:
        """Run one ``toolbox ...`` line of the README, made tiny; it must exit 0."""
        args = shlex.split(line)[1:]
        self.fabricate_for(args)
        result = CliRunner().invoke(app, tiny(args))
        runlock.release_all()
        assert result.exit_code == 0, f"{line}\n{result.output}"
        self.ran.append(line)

    def python(self, code: str) -> str:
        """Run a Python block of the README; what it printed."""
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})  # noqa: S102 - the README's own code
        self.ran.append("python block")
        return printed.getvalue()

    def block(self, language: str, code: str) -> None:
        """Run one runnable block."""
        if language == "python":
            self.python(code)
            return
        for line in shell_commands(code):
            if line.startswith(SKIPPED):
                self.skipped.append(line)
            elif line.startswith("toolbox "):
                self.toolbox(line)
            else:
                raise AssertionError(f"README.md: a runnable line the walk does not know how to run: {line}")


def promised_outputs(blocks: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """The run directories (``toolbox run --out``) and predictions CSVs (``toolbox predict --out``)
    the runnable blocks promise."""
    runs, csvs = [], []
    for language, code in blocks:
        for line in shell_commands(code) if language != "python" else []:
            args = shlex.split(line)[1:] if line.startswith("toolbox ") else []
            if args and (out := option(args, "--out")):
                (runs if args[0] == "run" else csvs if args[0] == "predict" else []).append(out)
    return runs, csvs


def test_the_runnable_blocks_are_found() -> None:
    text = "a\n<!-- runnable -->\n```bash\ntoolbox run --out r  # c\nx && toolbox step r \\\n  --data d\n```\n" \
           "```bash\ntoolbox eval\n```\n<!-- runnable -->\n```python\nprint(1)\n```\n"
    blocks = runnable_blocks(text)
    assert [language for language, _ in blocks] == ["bash", "python"]
    assert shell_commands(blocks[0][1]) == ["toolbox run --out r", "x", "toolbox step r    --data d"]
    assert tiny(["step", "r"]) == ["step", "r"] and tiny(["run", "--config", "c"])[-2:] == ["--per-class", "10"]


def test_a_new_user_walks_the_readme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # a checkout: the README's commands run in one
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TOOLBOX_DATA", str(tmp_path / "data"))
    blocks = runnable_blocks((ROOT / "README.md").read_text())
    assert [language for language, _ in blocks].count("python") >= 1 and len(blocks) >= 4
    walk = Walk(tmp_path)
    for language, code in blocks:
        walk.block(language, code)
    print("skipped (set-up):", *walk.skipped, sep="\n  ")
    assert walk.skipped and all(line.startswith(SKIPPED) for line in walk.skipped)
    assert any(line.startswith("toolbox predict") for line in walk.ran) and "python block" in walk.ran
    runs, csvs = promised_outputs(blocks)
    assert runs and csvs
    for run in runs:
        results = json.loads((tmp_path / run / "results.json").read_text())
        served = [tmp_path / run / "serve" / f"step{s['step']}.pt" for s in results["steps"]]
        assert all(path.exists() for path in served) and (tmp_path / run / "serve" / "current.pt").exists(), run
    for name in csvs:
        rows = list(csv.DictReader((tmp_path / name).open()))
        assert rows and all(row["error"] == "" for row in rows), name
