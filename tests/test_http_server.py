"""``toolbox serve`` on loopback with a real HTTP client: no request fails while a new model is
promoted, every answer names its step and the step changes once; 400 / 413 with one sentence;
SIGTERM stops it with exit 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from fabricate import write_image_folder
from typer.testing import CliRunner

from toolbox.cli.commands import app
from toolbox.deploy.live_model import LiveModel

runner = CliRunner()
CLASSES = ("ant", "bee", "cat")
TINY = ["--arch", "cifar_resnet20", "--epochs", "1", "--batch-size", "8", "--eval-batch-size", "32",
        "--device", "cpu", "--threads", "1", "--image-size", "16", "--plugins", "finetune"]
START_S, REQUEST_S = 90.0, 20.0  # bounded waits: the server's start (imports on a busy machine), one request


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of ``files`` (name, bytes) and its content type."""
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + blob + b"\r\n" for name, blob in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def call(url: str, files: list[tuple[str, bytes]] | None = None) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a GET (no files) or a POST of ``files``."""
    body, kind = multipart(files) if files is not None else (None, "")
    request = urllib.request.Request(url, data=body, headers={"Content-Type": kind} if kind else {})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step folder run (the gate promoted step 1), with the next step's folder d2 beside it."""
    root = tmp_path_factory.mktemp("serve")
    for name, seed in (("d1", 10), ("d2", 11)):
        write_image_folder(root / name, CLASSES, per_class=6, size=(20, 20), seed=seed)
    write_image_folder(root / "test", CLASSES, per_class=1, size=(20, 20), seed=99)
    result = runner.invoke(app, ["run", "--shards", str(root / "d1"), "--test", str(root / "test"),
                                 "--out", str(root / "run"), *TINY])
    assert result.exit_code == 0, result.output
    assert json.loads((root / "run" / "serve" / "history.json").read_text())["current"]["step"] == 1
    return root / "run"


@pytest.fixture
def server(folder_run: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``toolbox serve RUN`` in a subprocess on a free loopback port; always stopped afterwards."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "toolbox.cli", "serve", str(folder_run), "--port", str(port),
                                "--max-upload-mb", "1", "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if call(url + "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /health in time"
            time.sleep(0.2)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_requests_during_a_promotion_all_succeed_and_the_step_changes_once(server: tuple[Any, str], folder_run: Path) -> None:
    process, url = server
    image = ("img0.png", (folder_run.parent / "test" / "ant" / "img0.png").read_bytes())
    answers: list[tuple[int, Any]] = []
    stop = threading.Event()

    def loop() -> None:
        for _ in range(5000):  # bounded; stopped once the new step has answered a few times
            if stop.is_set():
                return
            try:
                status, body = call(url + "/predict?top_k=2", [image, image])
            except OSError as exc:
                status, body = 0, {"detail": str(exc)}
            answers.append((status, body.get("step") if status == 200 else body))

    client = threading.Thread(target=loop, daemon=True)
    client.start()
    try:
        result = runner.invoke(app, ["step", str(folder_run), "--data", str(folder_run.parent / "d2"),
                                     "--promote", "always"])  # the gate promotes step 2 (the rule: every step)
        assert result.exit_code == 0, result.output
        deadline = time.monotonic() + 30
        while [step for _, step in answers[-3:]] != [2, 2, 2] and time.monotonic() < deadline and client.is_alive():
            time.sleep(0.05)
    finally:
        stop.set()
        client.join(timeout=REQUEST_S + 5)
    assert answers and all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    steps = [step for _, step in answers]
    assert set(steps) == {1, 2} and steps == sorted(steps)  # 1 ... 1 2 ... 2: one change
    status, model = call(url + "/model")
    assert status == 200 and model["step"] == 2 and model["promoted_at"] and "always" in model["gate"]["reason"]
    assert model["classes"] == list(CLASSES)

    status, body = call(url + "/predict", [("notes.png", b"not an image at all")])
    assert status == 400 and body["detail"].startswith("notes.png is not an image")
    assert body["detail"].endswith(".") and body["detail"].count(". ") == 0  # one sentence
    status, body = call(url + "/predict?top_k=many", [image])
    assert status == 400 and body["detail"].startswith("top_k is not valid")
    status, body = call(url + "/predict", [("big.png", b"\0" * (1_100_000))])
    assert status == 413 and "1 MB" in body["detail"] and body["detail"].count(". ") == 0

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def test_a_promoted_file_that_does_not_load_leaves_the_old_model_serving(folder_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "serve").mkdir(parents=True)
    step1 = (folder_run / "serve" / "step1.pt").read_bytes()
    (run / "serve" / "current.pt").write_bytes(step1)
    live = LiveModel(run)
    first = live.get()
    assert first.step == 1 and live.get() is first  # unchanged file: no reload
    (run / "serve" / "current.pt.new").write_bytes(step1[: len(step1) // 2])
    os.replace(run / "serve" / "current.pt.new", run / "serve" / "current.pt")  # a truncated promotion
    assert live.get() is first and live.reloads == 0
    assert live.get() is first and live._refused is not None  # not tried again until it changes
    os.replace(run / "serve" / "current.pt", run / "serve" / "broken.pt")
    (run / "serve" / "current.pt").write_bytes(step1)  # a good promotion after the bad one
    assert live.get() is not first and live.get().step == 1 and live.reloads == 1


def test_serve_refuses_a_run_without_a_model_and_a_taken_port(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", str(tmp_path / "nothing"), "--port", str(free_port())])
    assert result.exit_code == 2 and "does not exist" in result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = runner.invoke(app, ["serve", str(tmp_path), "--port", str(taken.getsockname()[1])])
    assert result.exit_code == 2 and "Cannot listen on 127.0.0.1:" in result.output
