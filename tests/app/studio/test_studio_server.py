"""scratchnst.app.studio.server (with runs.py and task.py under it): the HTTP API against a real
`scratchnst serve` process on 127.0.0.1 — a run from upload to done (the picture stylize makes), the
event stream, stop, delete, every bad input refused with one JSON line while the server goes on,
the token on another address, no cross-origin requests, and a server killed with SIGKILL mid-run
resuming the run to the bytes of an uninterrupted one. Every wait is on recorded state, bounded."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import urllib.request
import zlib

import numpy as np
import pytest
from PIL import Image


def _png(answer) -> np.ndarray:
    assert answer.status == 200 and answer.headers["Content-Type"] == "image/png", answer.status
    return np.asarray(Image.open(io.BytesIO(answer.body)))


def test_a_run_from_upload_to_done_is_the_picture_stylize_makes(studio, images, small_run, run_cli, tmp_path, weights_env):
    created = studio.upload_run(images["content"], [images["style"]], small_run)
    assert created.status == 201, created
    run_id = created.body["id"]
    state = studio.wait_ended(run_id)
    assert state["status"] == "done", state
    assert [e["iteration"] for e in state["history"]] == [1, 2, 3] and state["total"] == 3
    assert state["options"] == small_run and state["args"]["size"] == 32
    picture = studio.call("GET", f"/api/runs/{run_id}/image")
    again = studio.call("GET", f"/api/runs/{run_id}/image", headers={"If-None-Match": picture.headers["Etag"]})
    assert again.status == 304
    manifest = studio.call("GET", f"/api/runs/{run_id}/manifest")
    assert manifest.status == 200 and manifest.body["status"] == "done" and len(manifest.body["history"]) == 3
    # the same run through the command line: the same picture
    (tmp_path / "c.png").write_bytes(images["content"])
    (tmp_path / "s.png").write_bytes(images["style"])
    r = run_cli("stylize", "c.png", "s.png", "-o", "cli.png", "--size", "32", "--iterations", "3", "--scales", "1", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(_png(picture), np.asarray(Image.open(tmp_path / "cli.png")))
    listed = studio.call("GET", "/api/runs").body
    assert run_id in [r["id"] for r in listed]
    names = {i["name"]: i for i in studio.call("GET", "/api/images").body}
    assert state["content"] in names and state["styles"][0] in names
    assert {i["example"] for i in names.values()} >= {"content", "style"}


def test_the_event_stream_tells_every_iteration_and_ends_with_the_run(studio, images, small_run, events):
    created = studio.upload_run(images["content"], [images["style"]], {**small_run, "iterations": 6})
    run_id = created.body["id"]
    messages = events(studio, run_id)
    assert messages[-1]["status"] == "done"
    assert all(m["status"] in ("queued", "running") for m in messages[:-1])
    entries = []
    for m in messages:
        assert m["from"] == len(entries), "each message carries the entries after the last one"
        entries += m["entries"]
    assert [e["iteration"] for e in entries] == list(range(1, 7))
    # a stream opened after the end: one message, the whole history
    late = events(studio, run_id)
    assert len(late) == 1 and late[0]["status"] == "done" and len(late[0]["entries"]) == 6


def test_stop_keeps_the_picture_and_its_manifest(studio, images, small_run):
    run_id = studio.upload_run(images["content"], [images["style"]], {**small_run, "iterations": 2000}).body["id"]
    studio.wait_iteration(run_id, 2)
    assert studio.call("POST", f"/api/runs/{run_id}/stop").status == 202
    state = studio.wait_ended(run_id)
    assert state["status"] == "stopped"
    manifest = studio.call("GET", f"/api/runs/{run_id}/manifest").body
    assert manifest["status"] == "interrupted" and manifest["checkpoint"]
    assert _png(studio.call("GET", f"/api/runs/{run_id}/image")).shape[:2] == (27, 32)
    assert len(manifest["history"]) == len(state["history"]) >= 2


def test_delete_stops_the_run_and_removes_its_files(studio, images, small_run):
    run_id = studio.upload_run(images["content"], [images["style"]], {**small_run, "iterations": 2000}).body["id"]
    studio.wait_iteration(run_id, 1)
    assert studio.call("DELETE", f"/api/runs/{run_id}").status == 200
    assert studio.call("GET", f"/api/runs/{run_id}").status == 404
    assert not (studio.data / "runs" / run_id).exists()


def test_the_study_panel_of_a_finished_run(studio, images, small_run):
    run_id = studio.upload_run(images["content"], [images["style"]], small_run).body["id"]
    studio.wait_ended(run_id)
    answer = studio.call("GET", f"/api/runs/{run_id}/study?refresh=1")
    assert answer.status == 202
    studio.wait_until(lambda: studio.call("GET", f"/api/runs/{run_id}/study").status == 200, what="the study")
    found = studio.call("GET", f"/api/runs/{run_id}/study").body
    terms = [g["term"] for g in found["gradients"]]
    assert terms[0] == "content" and terms[-1] == "tv" and sum(t.startswith("style ") for t in terms) == 5
    assert abs(sum(row["share"] for row in found["terms"]) - 1) < 1e-6
    assert _png(studio.call("GET", f"/api/runs/{run_id}/study/{found['gradients'][0]['image']}")).shape[:2] == (27, 32)


# -- refusals --------------------------------------------------------------------------------------


def _bomb() -> bytes:
    """A PNG whose header claims 100000 x 100000 pixels (its data a few bytes): never decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _png_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_every_bad_input_is_one_json_line_and_the_server_goes_on(start_studio, images, small_run):
    studio = start_studio("--workers", "1", "--max-upload", "300000", "--max-pixels", "20000", "--max-size", "64", "--max-queued", "1")
    content, style = images["content"], images["style"]
    example = {i["example"]: i["name"] for i in studio.call("GET", "/api/images").body}
    named = {"content": example["content"], "styles": [example["style"]]}
    cases = [
        ("not an image", lambda: studio.upload_run(b"hello, not a picture", [style], small_run), 400, "content: not an image"),
        ("an empty file", lambda: studio.upload_run(content, [b""], small_run), 400, "style 1: file is empty"),
        ("a decompression bomb", lambda: studio.upload_run(_bomb(), [style], small_run), 413, "pixels"),
        ("too many pixels", lambda: studio.upload_run(_png_bytes(200, 120), [style], small_run), 413, "limit is 20,000"),
        ("too many bytes", lambda: studio.upload_run(os.urandom(400_000), [style], small_run), 413, "--max-upload"),
        ("an unknown option", lambda: studio.call("POST", "/api/runs", {**named, "options": {"colour": "x"}}), 400, "unknown option 'colour'"),
        ("an invalid option", lambda: studio.call("POST", "/api/runs", {**named, "options": {"size": -1}}), 400, "--size must be a whole number > 0"),
        ("an invalid choice", lambda: studio.call("POST", "/api/runs", {**named, "options": {"color": "purple"}}), 400, "--color: unknown value"),
        ("a list where a number goes", lambda: studio.call("POST", "/api/runs", {**named, "options": {"scales": "0.5"}}), 400, "--scales takes a list"),
        ("a size over the limit", lambda: studio.call("POST", "/api/runs", {**named, "options": {"size": 65}}), 400, "--max-size"),
        ("an init path", lambda: studio.call("POST", "/api/runs", {**named, "options": {"init": "/etc/passwd"}}), 400, "--init"),
        ("options not an object", lambda: studio.call("POST", "/api/runs", {**named, "options": [1]}), 400, "JSON object"),
        ("a name with /", lambda: studio.call("POST", "/api/runs", {**named, "content": "../../etc/passwd"}), 400, "not the name"),
        ("a name with a NUL", lambda: studio.call("POST", "/api/runs", {**named, "styles": ["a\x00b.png"]}), 400, "not the name"),
        ("an unknown image", lambda: studio.call("POST", "/api/runs", {**named, "content": "0123456789abcdef.png"}), 404, "no image named"),
        ("no styles", lambda: studio.call("POST", "/api/runs", {**named, "styles": []}), 400, "at least one style"),
        ("a body that is not JSON", lambda: studio.call("POST", "/api/runs", b"{nope", {"Content-Type": "application/json"}), 400, "not JSON"),
        ("an unknown id", lambda: studio.call("GET", "/api/runs/20990101-000000-abcdef"), 404, "no run"),
        ("an id with ..", lambda: studio.call("GET", "/api/runs/.."), 404, ""),
        ("an image name with an encoded /", lambda: studio.call("GET", "/api/images/..%2Frequest.json"), 404, "no image named"),
        ("an image name with an encoded NUL", lambda: studio.call("GET", "/api/images/a%00.png"), 404, "no image named"),
        ("a stop of an unknown id", lambda: studio.call("POST", "/api/runs/nope/stop"), 404, "no run"),
        ("an unknown path", lambda: studio.call("GET", "/api/nothing"), 404, "no such path"),
    ]
    for what, request, status, needle in cases:
        answer = request()
        assert answer.status == status, (what, answer)
        assert isinstance(answer.body, dict) and set(answer.body) == {"error"}, (what, answer)
        line = answer.body["error"]
        assert needle in line and "\n" not in line and "Traceback" not in line, (what, line)
        assert str(studio.data) not in line, (what, line)  # no server path in a message
    # the limit on queued runs: one may be queued or running here
    first = studio.call("POST", "/api/runs", {**named, "options": {**small_run, "iterations": 2000}})
    assert first.status == 201
    second = studio.call("POST", "/api/runs", {**named, "options": small_run})
    assert second.status == 429 and "--max-queued" in second.body["error"]
    studio.call("POST", f"/api/runs/{first.body['id']}/stop")
    assert studio.wait_ended(first.body["id"])["status"] == "stopped"
    assert studio.call("POST", "/api/runs", {**named, "options": small_run}).status == 201  # still serving
    assert not list((studio.data / "tmp").iterdir()), "uploads left behind"


def test_another_address_needs_the_token_and_no_cross_origin_request_passes(start_studio, images):
    studio = start_studio("--host", "127.0.0.2", "--workers", "1")
    assert studio.base.startswith("http://127.0.0.2:") and studio.token and len(studio.token) >= 16
    for path in ("/api/runs", "/api/images", "/api/runs/20990101-000000-abcdef/events"):
        answer = studio.call("GET", path, token=False)
        assert answer.status == 401 and "token" in answer.body["error"], (path, answer)
        wrong = studio.call("GET", path, headers={"Authorization": "token not-the-token"}, token=False)
        assert wrong.status == 401
    assert studio.call("GET", f"/api/runs?token={studio.token}", token=False).status == 200
    assert studio.call("GET", "/api/runs").status == 200  # the header
    assert studio.call("GET", "/", token=False).status == 200  # the page holds no secret; the API does
    foreign = studio.call("POST", "/api/runs", {"content": "x"}, headers={"Origin": "http://evil.example"})
    assert foreign.status == 403 and "cross-origin" in foreign.body["error"]
    assert "Access-Control-Allow-Origin" not in studio.call("GET", "/api/runs", headers={"Origin": "http://evil.example"}).headers



def test_another_host_name_is_refused_on_the_default_address(studio):
    """DNS rebinding: a page of another site whose name now points at 127.0.0.1 gets nothing."""
    rebound = studio.call("GET", "/api/runs", headers={"Host": f"evil.example:{studio.base.rsplit(':', 1)[1]}"})
    assert rebound.status == 403 and "answers to" in rebound.body["error"]
    assert studio.call("GET", "/api/runs", headers={"Host": f"localhost:{studio.base.rsplit(':', 1)[1]}"}).status == 200


@pytest.mark.slow
def test_a_server_killed_mid_run_resumes_it_to_the_bytes_of_an_uninterrupted_run(start_studio, images, small_run, tmp_path):
    options = {**small_run, "size": 48, "iterations": 16}
    first = start_studio("--workers", "1", "--preview-every", "0", "--checkpoint-every", "2")
    run_id = first.upload_run(images["content"], [images["style"]], options).body["id"]
    first.wait_iteration(run_id, 5)
    os.kill(first.proc.pid, signal.SIGKILL)  # the server only: its worker may live on, an orphan
    first.proc.wait(timeout=60)
    second = start_studio("--workers", "1", "--preview-every", "0", data=first.data)
    state = second.wait_ended(run_id)
    assert state["status"] == "done", state
    assert [e["iteration"] for e in state["history"]] == list(range(1, 17))
    resumed = second.call("GET", f"/api/runs/{run_id}/image").body
    named = {"content": state["content"], "styles": state["styles"], "options": options}
    reference = second.call("POST", "/api/runs", named).body["id"]
    assert second.wait_ended(reference)["status"] == "done"
    assert second.call("GET", f"/api/runs/{reference}/image").body == resumed


@pytest.mark.slow
def test_an_orphaned_task_of_a_killed_server_stops_before_the_next_server_resumes_its_run(
        start_studio, dask_processes, weights_env, images, small_run):
    """On a cluster of its own (--scheduler), a killed server's task lives on in its worker: the next
    server's claim of the data folder stops it (it saves a checkpoint), and the lock keeps the resumed
    task (on the other worker) out of the folder until then; the picture is an uninterrupted run's."""
    address = dask_processes.scheduler()
    dask_processes.worker("a")
    dask_processes.worker("b")
    options = {**small_run, "size": 48, "iterations": 24}
    first = start_studio("--scheduler", address, "--preview-every", "0", "--checkpoint-every", "2")
    run_id = first.upload_run(images["content"], [images["style"]], options).body["id"]
    first.wait_iteration(run_id, 5)
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=60)
    second = start_studio("--scheduler", address, "--preview-every", "0", data=first.data)
    state = second.wait_ended(run_id)
    assert state["status"] == "done", state
    assert [e["iteration"] for e in state["history"]] == list(range(1, 25))
    tasks_log = first.data / "runs" / run_id / "tasks.log"
    second.wait_until(lambda: tasks_log.read_text().count(" end ") == 2, what="the resumed task to let go of the lock")
    log = [line.split() for line in tasks_log.read_text().splitlines()]
    sessions = [words[2] for words in log if words[1] == "start"]
    assert len(sessions) == 2, log
    # one writer at a time: the orphan stopped (lost its run to the new server) before the resumed task began
    assert [words[1:3] + words[3:4] for words in log] == [
        ["start", sessions[0], log[0][3]], ["end", sessions[0], "lost"], ["start", sessions[1], log[2][3]], ["end", sessions[1], "done"]]
    resumed = second.call("GET", f"/api/runs/{run_id}/image").body
    reference = second.call("POST", "/api/runs", {"content": state["content"], "styles": state["styles"], "options": options}).body["id"]
    assert second.wait_ended(reference)["status"] == "done"
    assert second.call("GET", f"/api/runs/{reference}/image").body == resumed
