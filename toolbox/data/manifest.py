"""What a run trains and tests on, and the checks that keep test images out of training.

A :class:`Manifest` lists every image of one folder: its path relative to the folder, its size and
its content hash (BLAKE2b of the file's bytes, taken by the decoded cache in the same read that
decodes the file). Two files with the same hash are the same image, whatever their names.

The checks refuse, with one sentence naming the folders, the counts and an example file: the same
folder given twice as step folders, an image in both a training folder and the test folder, and a
new step folder whose images the run already trained on (more than :data:`MAX_REPEATED` of them).
``allow`` (``--allow-overlap``) turns each refusal into a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolbox.data.decoded_cache import FileList
from toolbox.errors import UsageError

#: A new step folder may repeat at most this fraction of its images from earlier steps.
MAX_REPEATED = 0.5
OVERRIDE = "--allow-overlap"

log = logging.getLogger("toolbox")


@dataclass
class Manifest:
    """The images of ``folder``: ``(relative path, size, content hash)`` each; the hash is ``""``
    for a file that could not be read."""

    folder: str
    files: list[tuple[str, int, str]] = field(default_factory=list)

    def hashes(self) -> dict[str, str]:
        """Content hash -> the first relative path with it (unreadable files left out)."""
        found: dict[str, str] = {}
        for path, _, digest in self.files:
            if digest:
                found.setdefault(digest, path)
        return found

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as the run directory's manifests.json holds it."""
        return {"folder": self.folder, "files": [list(item) for item in self.files]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """The manifest :meth:`to_dict` wrote."""
        return cls(str(data["folder"]), [(str(p), int(s), str(h)) for p, s, h in data["files"]])


@dataclass
class RunManifests:
    """The manifests of a ``--shards`` run: its test folder and every step's folder."""

    test: Manifest | None = None
    steps: dict[int, Manifest] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (steps in order)."""
        return {"format": 1, "test": None if self.test is None else self.test.to_dict(),
                "steps": [{"step": k, **self.steps[k].to_dict()} for k in sorted(self.steps)]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunManifests:
        """The manifests :meth:`to_dict` wrote."""
        test = data.get("test")
        return cls(None if test is None else Manifest.from_dict(test),
                   {int(s["step"]): Manifest.from_dict(s) for s in data.get("steps") or []})


def folder_manifests(folders: Sequence[Path], files: FileList, counts: Sequence[int],
                     digests: np.ndarray) -> list[Manifest]:
    """One manifest per folder of a loaded set: ``files`` in folder order (``counts`` each) and
    their content hashes (one row per file, zeros where unreadable)."""
    manifests, start = [], 0
    for folder, count in zip(folders, counts):
        prefix = len(str(folder)) + 1
        rows = [(files.paths[i][prefix:], int(files.sizes[i]), digests[i].tobytes().hex() if digests[i].any() else "")
                for i in range(start, start + count)]
        manifests.append(Manifest(str(folder), rows))
        start += count
    return manifests


def shared_paths(a: Manifest, b: Manifest) -> list[str]:
    """The relative paths of ``a``'s images whose content is also in ``b``."""
    other = b.hashes()
    return [path for path, _, digest in a.files if digest and digest in other]


def refuse_or_warn(problem: str, fix: str, allow: bool) -> None:
    """One sentence: a :class:`UsageError` (``problem``; ``fix``, or the override), or with ``allow`` a warning."""
    if not allow:
        raise UsageError(f"{problem}; {fix}, or pass {OVERRIDE} to go on anyway.")
    log.warning("%s; going on because of %s.", problem, OVERRIDE)


def check_repeated_folders(folders: Sequence[str], allow: bool) -> None:
    """Refuse a folder given more than once as a step folder (``--shards``)."""
    seen: dict[Path, list[int]] = {}
    for step, folder in enumerate(folders, 1):
        seen.setdefault(Path(folder).expanduser().resolve(), []).append(step)
    for folder, steps in seen.items():
        if len(steps) > 1:
            refuse_or_warn(f"--shards names the folder {folder} {len(steps)} times (steps "
                           f"{', '.join(map(str, steps))}), so the run would train on the same images again",
                           "give each step its own folder", allow)


def labelled_steps(steps: dict[int, Manifest]) -> list[tuple[str, Manifest]]:
    """``(label, manifest)`` per step folder, in step order, as the overlap checks name them."""
    return [(f"step {k}'s folder", m) for k, m in sorted(steps.items())]


def check_test_overlap(training: Sequence[tuple[str, Manifest]], test: Manifest, allow: bool) -> None:
    """Refuse an image of the test folder that is also in a training folder (``(label, manifest)``
    each, e.g. ``("step 1's folder", m)``): its test score would count images the model trained on."""
    for label, manifest in training:
        shared = shared_paths(test, manifest)
        if shared:
            refuse_or_warn(f"{len(shared)} of the {len(test.files)} images in the test folder {test.folder} are "
                           f"also in {label} {manifest.folder} (same content, e.g. {shared[0]}), so the test "
                           "top-1 would count images the model trained on",
                           "remove them from one of the folders", allow)


def check_validation_overlap(val: Manifest, test: Manifest | None, training: Sequence[tuple[str, Manifest]],
                             allow: bool) -> None:
    """Refuse a validation image (``--val``) that is also a test image (promotion would then look at
    the test set) or a training image (``(label, manifest)`` each: its validation top-1 would count
    images the model trained on)."""
    held_out = [("the test folder", test, "the promotion gate would judge on test images")] if test is not None else []
    for label, other, why in held_out + [(label, m, "validation top-1 would count images the model trained on")
                                         for label, m in training]:
        shared = shared_paths(val, other)
        if shared:
            refuse_or_warn(f"{len(shared)} of the {len(val.files)} images in the validation folder {val.folder} are "
                           f"also in {label} {other.folder} (same content, e.g. {shared[0]}), so {why}",
                           "remove them from one of the folders", allow)


def check_new_folder(new: Manifest, trained: dict[int, Manifest], allow: bool,
                     fraction: float = MAX_REPEATED) -> None:
    """Refuse a new step folder when more than ``fraction`` of its images were trained on in an
    earlier step (``trained``: step -> manifest); fewer is a warning."""
    seen: dict[str, int] = {}
    for step in sorted(trained, reverse=True):
        seen.update(dict.fromkeys(trained[step].hashes(), step))
    repeated = [(path, seen[digest]) for path, _, digest in new.files if digest in seen]
    if not repeated:
        return
    steps = sorted({step for _, step in repeated})
    problem = (f"{len(repeated)} of the {len(new.files)} images in the new folder {new.folder} were already "
               f"trained on in step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))} (same content, "
               f"e.g. {repeated[0][0]})")
    if len(repeated) > fraction * len(new.files):
        refuse_or_warn(problem, "pass a folder of new images", allow)
    else:
        log.warning("%s; training on them again.", problem)
