"""The studio's fixtures: a real `scratchnst serve` process on a loopback address (port 0: it prints the
one it got), its data folder in the test's tmp folder, a small HTTP client for its API (urllib, a
multipart encoder), and bounded waits on what the runs record."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[3]
DEADLINE_S = 120  # conftest's: the longest wait, reaching it a failure (never a verdict on speed)

# The smallest studio run worth watching: 32 px, one scale (the server's options, as JSON).
RUN = {"size": 32, "iterations": 3, "scales": [1]}
ENDED = ("done", "stopped", "failed")


class Answer(NamedTuple):
    status: int
    body: object  # the JSON, or the bytes of anything else
    headers: dict


def multipart(fields: dict, files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data request: text `fields`, (field, bytes) `files`."""
    boundary = secrets.token_hex(12)
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for k, (name, data) in enumerate(files):
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="up{k}.png"\r\nContent-Type: application/octet-stream\r\n\r\n'
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Studio:
    """A running `scratchnst serve`: its process, address, data folder, token, and its API."""

    def __init__(self, proc: subprocess.Popen, url: str, data: Path, log: Path, wait_until):
        self.proc, self.data, self.log, self.wait_until = proc, data, log, wait_until
        self.base, _, query = url.partition("?")
        self.base = self.base.rstrip("/")
        self.token = query.removeprefix("token=") or None

    def call(self, method: str, path: str, body=None, headers: dict | None = None, token: bool = True) -> Answer:
        """One request; a dict body goes as JSON. Never raises for an HTTP status."""
        headers = dict(headers or {})
        if isinstance(body, dict):
            body, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        if token and self.token:
            headers.setdefault("Authorization", f"token {self.token}")
        request = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=DEADLINE_S) as r:
                status, raw, got = r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            status, raw, got = e.code, e.read(), dict(e.headers)
        if got.get("Content-Type", "").startswith("application/json") and raw:
            return Answer(status, json.loads(raw), got)
        return Answer(status, raw, got)

    def upload_run(self, content: bytes, styles: list[bytes], options: dict) -> Answer:
        body, ctype = multipart({"options": json.dumps(options)}, [("content", content), *[("style", s) for s in styles]])
        return self.call("POST", "/api/runs", body, {"Content-Type": ctype})

    def run(self, run_id: str) -> dict:
        answer = self.call("GET", f"/api/runs/{run_id}")
        assert answer.status == 200, answer
        return answer.body

    def wait_for(self, run_id: str, check, what: str) -> dict:
        """The run's recorded state once check(state) holds (bounded; fails if the server exits)."""
        seen = {}

        def holds():
            seen["state"] = self.run(run_id)
            return check(seen["state"])

        self.wait_until(holds, proc=self.proc, what=f"run {run_id} {what}", log=self.log)
        return seen["state"]

    def wait_ended(self, run_id: str) -> dict:
        return self.wait_for(run_id, lambda s: s["status"] in ENDED, "to end")

    def wait_iteration(self, run_id: str, iteration: int) -> dict:
        return self.wait_for(run_id, lambda s: (s.get("progress") or {}).get("iteration", 0) >= iteration, f"to reach iteration {iteration}")


def start_server(wait_until, folder: Path, weights: Path, *flags, data: Path | None = None) -> Studio:
    """`scratchnst serve --port 0 --data DATA FLAGS` in its own process group (its workers load the
    `weights`), once it printed its address."""
    data = data or folder / "data"
    log = folder / f"serve-{secrets.token_hex(3)}.log"
    env = {**os.environ, "SCRATCHNST_WEIGHTS": str(weights), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "scratchnst", "serve", "--port", "0", "--data", str(data), *map(str, flags)],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env, start_new_session=True)
    line = {}

    def printed():
        line["url"] = proc.stdout.readline().strip()  # blocks until the line or the end of output
        return True

    wait_until(printed, proc=proc, what="the server to print its address", log=log)
    assert line["url"].startswith("http://"), log.read_text()
    return Studio(proc, line["url"], data, log, wait_until)


def stop_server(studio: Studio) -> None:
    """SIGTERM (it hands its runs over), then the whole process group killed."""
    if studio.proc.poll() is None:
        studio.proc.send_signal(signal.SIGTERM)
        try:
            studio.proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(studio.proc.pid, signal.SIGKILL)  # its local cluster too, and any orphan of a killed server
    except ProcessLookupError:
        pass
    studio.proc.wait(timeout=DEADLINE_S)
    studio.proc.stdout.close()


@pytest.fixture
def start_studio(tmp_path, vgg_weights_path, wait_until):
    """start_studio(*flags, data=None): a server in tmp_path; every one started is stopped afterwards."""
    started = []

    def start(*flags, data: Path | None = None) -> Studio:
        studio = start_server(wait_until, tmp_path, vgg_weights_path, *flags, data=data)
        started.append(studio)
        return studio

    yield start
    for studio in started:
        stop_server(studio)


@pytest.fixture(scope="session")
def studio(tmp_path_factory, vgg_weights_path, wait_until):
    """One server for the studio's tests: two workers, an update every iteration."""
    s = start_server(wait_until, tmp_path_factory.mktemp("studio"), vgg_weights_path, "--workers", "2", "--preview-every", "0", "--checkpoint-every", "2")
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def images(tmp_path_factory, make_pictures) -> dict:
    """PNG bytes of a 48x40 content and a 40x44 style (conftest's generated pictures)."""
    pictures = make_pictures(tmp_path_factory.mktemp("studio-pictures"))
    return {"content": pictures.save("content.png").read_bytes(), "style": pictures.save("style.png", 40, 44).read_bytes()}


def sse_messages(studio: Studio, run_id: str, token: bool = True) -> list[dict]:
    """Every `state` message of the run's event stream, read to its end (bounded)."""
    headers = {"Authorization": f"token {studio.token}"} if token and studio.token else {}
    request = urllib.request.Request(f"{studio.base}/api/runs/{run_id}/events", headers=headers)
    messages, event = [], None
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=DEADLINE_S) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "state":
                messages.append(json.loads(line[6:]))
            assert time.monotonic() - started < DEADLINE_S, "the event stream did not end"
    return messages


@pytest.fixture(name="events", scope="session")
def _events():
    """events(studio, run_id, token=True): sse_messages, the run's event stream read to its end."""
    return sse_messages


@pytest.fixture(scope="session")
def small_run() -> dict:
    """RUN: the options of the smallest studio run worth watching."""
    return dict(RUN)
