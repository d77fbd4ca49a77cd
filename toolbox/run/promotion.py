"""The promotion gate: after every step, does the new model become the one served?

``--promote RULE`` is a comma-separated list of conditions that must all hold, judged on held-out
**validation** images (``--val-per-class N`` or ``--val DIR``), never on the test set the results
report. Each condition is ``METRIC OP VALUE`` with ``OP`` one of ``>= <= > <`` and ``VALUE`` a number,
``prev``, or ``prev+X`` / ``prev-X``:

- ``top1``: the new model's validation top-1 (percent); ``prev`` is the promoted model's;
- ``nfr``: the negative flip rate against the promoted model on the validation images (a fraction:
  the share of them the promoted model gets right and the new one gets wrong); ``pfr`` likewise.

The default, ``top1>=prev-0.5``, promotes a model no worse than the served one by more than half a
point; ``always`` promotes every step. The first step's model is always promoted (there is none to
compare with), and so is every model of a run without validation images (said once, on the console).

The promoted model is ``RUN_DIR/serve/current.pt``, a byte copy of ``serve/step{k}.pt`` replaced
atomically (a reader sees the old file or the new one, never part of one); every decision, with its
numbers, is appended to ``serve/history.json``. ``toolbox promote RUN --step K`` promotes by hand (a
rollback is promoting an earlier step).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from toolbox.errors import UsageError
from toolbox.storage.atomic import atomic_write_bytes, atomic_write_json, strict_json

DEFAULT_RULE = "top1>=prev-0.5"
METRICS = ("top1", "nfr", "pfr")
_CONDITION = re.compile(r"^(top1|nfr|pfr)\s*(>=|<=|>|<)\s*(?:(prev)\s*(?:([+-])\s*(\d+(?:\.\d*)?|\.\d+))?"
                        r"|(-?\d+(?:\.\d*)?|-?\.\d+))$")
RULE_HINT = "top1>=prev-0.5,nfr<=0.03 (metrics top1, nfr, pfr; values a number, prev, prev+X or prev-X) or always"


@dataclass(frozen=True)
class Condition:
    """One condition of a rule: ``metric op value`` (``relative``: value is added to ``prev``)."""

    metric: str
    op: str
    value: float
    relative: bool

    def holds(self, numbers: dict[str, float]) -> bool:
        """Whether the condition holds for ``numbers`` (``top1``, ``nfr``, ``pfr``, ``prev``)."""
        bound = numbers["prev"] + self.value if self.relative else self.value
        have = numbers[self.metric]
        return {">=": have >= bound, "<=": have <= bound, ">": have > bound, "<": have < bound}[self.op]

    def text(self) -> str:
        """The condition as the rule writes it."""
        if not self.relative:
            return f"{self.metric}{self.op}{self.value:g}"
        return f"{self.metric}{self.op}prev" + (f"{self.value:+g}" if self.value else "")


def parse_rule(rule: str) -> tuple[Condition, ...]:
    """The conditions of ``rule`` (``always``: none); a bad rule is one sentence naming the part."""
    text = str(rule).strip()
    if text.lower() == "always":
        return ()
    conditions = []
    for part in text.split(","):
        match = _CONDITION.match(part.strip())
        if not match:
            raise UsageError(f"--promote {rule!r}: cannot read {part.strip()!r}; write conditions such as {RULE_HINT}.")
        metric, op, prev, sign, offset, number = match.groups()
        if prev:
            if metric != "top1":
                raise UsageError(f"--promote {rule!r}: prev is the promoted model's top-1, so only top1 can use it; "
                                 f"write {metric} against a number, {RULE_HINT}.")
            value = float(offset or 0) * (-1 if sign == "-" else 1)
        else:
            value = float(number)
        conditions.append(Condition(metric, op, value, bool(prev)))
    return tuple(conditions)


def judge(rule: str, numbers: dict[str, float] | None, first: bool) -> tuple[bool, str]:
    """``(promote, reason)`` for the new model: ``numbers`` as :meth:`Condition.holds` reads them,
    ``None`` when there are no validation images; ``first``: no model has been promoted yet."""
    conditions = parse_rule(rule)
    if first:
        return True, "the first model"
    if not conditions:
        return True, "--promote always"
    if numbers is None:
        return True, "no validation images to judge it on (--val-per-class N, or --val DIR for folder runs)"
    failed = [c.text() for c in conditions if not c.holds(numbers)]
    if failed:
        return False, "fails " + ", ".join(failed)
    return True, "meets " + ",".join(c.text() for c in conditions)


# --------------------------------------------------------------------------- the files
def current_path(run_dir: Path) -> Path:
    """The promoted model: ``RUN_DIR/serve/current.pt``."""
    return Path(run_dir) / "serve" / "current.pt"


def history_path(run_dir: Path) -> Path:
    """Every promotion decision: ``RUN_DIR/serve/history.json``."""
    return Path(run_dir) / "serve" / "history.json"


def read_history(run_dir: Path) -> dict[str, Any]:
    """``{"current": {...} or None, "decisions": [...]}`` (empty for a run without promotions)."""
    import json

    path = history_path(run_dir)
    if not path.exists():
        return {"current": None, "decisions": []}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("decisions"), list):
            raise ValueError("not a history")
    except (ValueError, OSError) as exc:
        raise UsageError(f"{path} is not a promotion history the toolbox wrote ({exc}); move it away and "
                         f"promote again with `toolbox promote {run_dir} --step K`.") from None
    return data


def promoted_before(history: dict[str, Any], step: int) -> int | None:
    """The step whose model was promoted last among decisions about steps before ``step`` (the
    model a new step ``step`` is judged against; a decision about ``step`` itself, left by a phase
    redone after a kill, does not count)."""
    promoted = [d["step"] for d in history["decisions"] if d.get("promoted") and int(d["step"]) < step]
    return int(promoted[-1]) if promoted else None


def now() -> str:
    """The current time, ISO 8601 in UTC (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record_decision(run_dir: Path, decision: dict[str, Any], serve_file: Path) -> dict[str, Any]:
    """Append ``decision`` (``step``, ``promoted``, ``reason``, numbers) to the history, replacing
    an earlier decision of the same step by the gate (a phase redone after a kill); when promoted,
    switch ``current.pt`` to ``serve_file`` first. Returns the history."""
    history = read_history(run_dir)
    decision = strict_json({**decision, "at": decision.get("at") or now()})
    if decision.get("by") == "gate":
        history["decisions"] = [d for d in history["decisions"]
                                if not (d.get("by") == "gate" and d.get("step") == decision["step"])]
    if decision["promoted"]:
        atomic_write_bytes(current_path(run_dir), Path(serve_file).read_bytes())
        history["current"] = {"step": decision["step"], "promoted_at": decision["at"],
                              "reason": decision["reason"], "numbers": decision.get("numbers")}
    history["decisions"].append(decision)
    atomic_write_json(history_path(run_dir), history)
    return history


def promote_by_hand(run_dir: Path, step: int) -> dict[str, Any]:
    """``toolbox promote RUN --step K``: serve step ``step``'s model (an earlier one is a rollback),
    under the run's lock; returns the history."""
    from toolbox.run import lock
    from toolbox.run.directory import check_run_directory
    from toolbox.run.serve_files import serve_path

    run_dir = Path(run_dir)
    check_run_directory(run_dir)
    source = serve_path(run_dir, step)
    if not source.is_file():
        have = sorted(int(p.stem[4:]) for p in (run_dir / "serve").glob("step*.pt") if p.stem[4:].isdigit())
        raise UsageError(f"{run_dir} has no served model of step {step} (serve/step{step}.pt); "
                         f"pick one of the steps {', '.join(map(str, have)) or '(none yet)'}.")
    with lock.locked(run_dir):
        history = read_history(run_dir)
        current = history["current"]["step"] if history["current"] else None
        reason = "by hand" + ("" if current is None else f", replacing step {current}")
        decision = {"step": step, "promoted": True, "reason": reason, "rule": None, "against_step": current,
                    "numbers": None, "by": "toolbox promote"}
        return record_decision(run_dir, decision, source)
