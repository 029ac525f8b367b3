"""scratchnst.app.batch, `scratchnst batch` on Dask: names, jobs files, video jobs' options, same bytes as
stylize, skip/resume, faults.

Ordinary cases run on an in-process cluster (conftest's `client`); the worker kill uses
a real `dask scheduler` and `dask worker` processes; Ctrl-C goes to a CLI subprocess's whole process
group, as a terminal sends it. Small generated pictures, few iterations; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

import scratchnst
from scratchnst.app import batch as b
from scratchnst.app import cluster
from scratchnst.errors import ScratchnstError

pytestmark = [pytest.mark.weights, pytest.mark.usefixtures("weights_env")]


@pytest.fixture
def few(tiny):
    """The tiny run with 3 iterations, what these batch jobs run."""
    return tiny.but(iterations=3)


@pytest.fixture
def inputs(pictures) -> dict[str, str]:
    """Two contents (c1, c2) and two styles (s1, s2), 40x32, in tmp_path/in: their paths by name (the
    outputs are named after them)."""
    return {name: str(pictures.save(f"in/{name}.png", 40, 32)) for name in ("c1", "c2", "s1", "s2")}


def _batch_file(out: Path) -> dict:
    return json.loads((out / "batch.json").read_text())


# -- jobs and names (no cluster) ---------------------------------------------------------------


def test_grid_expands_folders_sorted_and_names_collisions(tmp_path, pictures):
    for name in ("b.png", "a.jpg"):
        pictures.save(f"photos/{name}")
    (tmp_path / "photos" / "notes.txt").write_text("not an image: left out of the folder's images")
    other = str(pictures.save("other/a.png"))  # shares the stem "a" with photos/a.jpg
    style = str(pictures.save("s.png"))
    jobs = b.grid([tmp_path / "photos", other], [style])
    assert [Path(j["content"]).name for j in jobs] == ["a.jpg", "b.png", "a.png"]
    names = [Path(j.output).name for j in b.plan(jobs, tmp_path / "out")]
    assert names == ["a__s.png", "b__s.png", "a-2__s.png"]
    # a sweep: the same pair three times; an explicit output that is a generated name's manifest too
    sweep = [{"content": other, "styles": [style], "style_weight": w} for w in (1, 2)] + [{"content": other, "styles": style, "output": "a__s.jpg"}]
    assert [Path(j.output).name for j in b.plan(sweep, tmp_path / "out")] == ["a__s-2.png", "a__s-3.png", "a__s.jpg"]
    with pytest.raises(ScratchnstError, match=r"job 2: output .*x.jpg collides with job 1's \(same manifest x.json\)"):
        b.plan([{"content": other, "styles": style, "output": "x.png"}, {"content": other, "styles": style, "output": "x.jpg"}], tmp_path)
    with pytest.raises(ScratchnstError, match="batch.json"):
        b.plan([{"content": other, "styles": style, "output": "batch.png"}], tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScratchnstError, match="empty: no images in this folder"):
        b.grid([tmp_path / "empty"], [style])


def test_jobs_file_paths_are_relative_to_it(tmp_path, inputs):
    (tmp_path / "jobs.jsonl").write_text('{"content": "in/c1.png", "styles": "in/s1.png", "size": 40}\n\n')
    [job] = b.read_jobs(tmp_path / "jobs.jsonl")
    assert job == {"content": str(tmp_path / "in/c1.png"), "styles": str(tmp_path / "in/s1.png"), "size": 40, "line": 1}


@pytest.mark.parametrize("text, needle", [
    ('{"content": "c.png", "styles": ["s.png"]}\n{"content": "c.png", "styles": ', "jobs.jsonl:2: not JSON"),
    ('\n["c.png", "s.png"]\n', "jobs.jsonl:2: a job is a JSON object, got list"),
    ('{"content": "c.png"}\n', 'jobs.jsonl:1: a job needs "styles"'),
    ('{"content": "c.png", "styles": [], "size": 32}\n', 'jobs.jsonl:1: a job needs "styles"'),
    ('{"content": "c.png", "styles": "s.png", "output": "a.png"}\n{"content": "d.png", "styles": "s.png", "output": "a.png"}\n',
     "line 2: output .*a.png collides with line 1's"),
    ("\n\n", "jobs.jsonl: no jobs in the file"),
    ('{"content": "c.png", "video": "v.mp4", "styles": "s.png"}\n', 'jobs.jsonl:1: a job has "content" \\(a picture\\) or "video", not both'),
    ('{"video": 3, "styles": "s.png"}\n', 'jobs.jsonl:1: "video" must be a video path'),
])
def test_malformed_jobs_file_is_refused_up_front(tmp_path, run_cli, text, needle):
    (tmp_path / "jobs.jsonl").write_text(text)
    r = run_cli("batch", "--jobs", "jobs.jsonl", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.search(needle, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_video_jobs_names_and_options(tmp_path, pictures):
    style = str(pictures.save("s.png"))
    jobs = b.grid([], [style], videos=[tmp_path / "clip.mkv", tmp_path / "frames"]) + [{"video": "x.avi", "styles": style, "output": "x/"}]
    planned = b.plan(jobs, tmp_path / "out", {"temporal_weight": 10, "save_every": 5, "size": 32})
    assert [(Path(j.output).name, j.kind) for j in planned] == [("clip__s.mkv", "video"), ("frames__s.mp4", "video"), ("x", "video")]
    assert planned[2].output == str(tmp_path / "out" / "x") + "/"  # a folder of frames
    assert planned[0].options == {"temporal_weight": 10, "size": 32}  # --save-every is one picture's
    [picture] = b.plan(b.grid([style], [style]), tmp_path / "out", {"temporal_weight": 10, "save_every": 5})
    assert picture.options == {"save_every": 5}  # the video options are the video jobs'
    settings, options = b.video_job_settings(planned[0])
    assert (settings.size, settings.iterations, settings.quiet) == (32, 20, True)  # video's iterations: each frame after the first
    assert (options.temporal_weight, options.frames, options.workers) == (10.0, (0, None), 0)  # the flows in the job's process
    assert b.video_job_settings(b.Job("v.mp4", [style], "o.mp4", {"frames": [2, None]}, kind="video"))[1].frames == (2, None)
    assert b.video_job_settings(b.Job("v.mp4", [style], "o.mp4", {}, kind="video"))[0].size is None  # the input's size
    assert b.video_job_settings(b.Job("v.mp4", [style], "o.mp4", {"long_term": [40, 1, 10]}, kind="video"))[1].long_term == (1, 10, 40)
    for opts, needle in [({"save_every": 1}, "unknown option 'save_every' \\(a video job takes video's options"), ({"frames": "4:2"}, "A:B"),
                         ({"frames": 3}, '"frames" takes "A:B" or \\[A, B\\]'), ({"independent": "yes"}, '"independent" takes true or false'),
                         ({"temporal_weight": -1}, "--temporal-weight must be a finite number"), ({"scales": "x"}, "--scales takes a list of numbers \\(got 'x'\\)"),
                         ({"long_term": "1,10"}, "--long-term takes a list of frame offsets"), ({"long_term": [10]}, "--long-term must include 1")]:
        with pytest.raises(ScratchnstError, match=needle):
            b.video_job_settings(b.Job("v.mp4", [style], "o.mp4", opts, kind="video"))


def test_a_multipass_batch_job_runs_its_passes_on_its_worker():
    job = b.Job("a.mp4", ["s.png"], "out.mp4", {"passes": 3, "blend": 0.5}, kind="video")
    _, own = b.video_job_settings(job)
    assert (own.passes, own.blend, own.workers) == (3, 0.5, 0)
    with pytest.raises(ScratchnstError, match="--passes must be a whole number"):
        b.video_job_settings(b.Job("a.mp4", ["s.png"], "out.mp4", {"passes": 1.5}, kind="video"))


def test_command_line_refusals(tmp_path, inputs, run_cli):
    r = run_cli("batch", "--contents", inputs["c1"], "-o", "out", cwd=tmp_path)
    assert r.returncode == 2 and "give --contents and --styles" in r.stderr
    r = run_cli("batch", "--contents", inputs["c1"], "--styles", inputs["s1"], "--workers", "0", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2 and "--workers: must be > 0" in r.stderr
    (tmp_path / "jobs.jsonl").write_text("{}\n")
    r = run_cli("batch", "--jobs", "jobs.jsonl", "--contents", inputs["c1"], "-o", "out", cwd=tmp_path)
    assert r.returncode == 2 and "not both" in r.stderr


# -- on an in-process cluster ----------------------------------------------------------------------


def test_same_bytes_as_stylize_and_manifest_beside(tmp_path, inputs, few, client):
    out = tmp_path / "out"
    jobs = b.grid([inputs["c1"], inputs["c2"]], [inputs["s1"]]) + [{"content": inputs["c1"], "styles": [inputs["s1"], inputs["s2"]], "style_weight": 1000}]
    results = scratchnst.batch(jobs, client, out_dir=out, **few)
    assert [r.status for r in results] == ["done"] * 3, results
    assert [Path(r.output).name for r in results] == ["c1__s1.png", "c2__s1.png", "c1__s1+s2.png"]
    for job, r in zip(jobs, results):
        options = {k: v for k, v in job.items() if k not in ("content", "styles")}
        ref = scratchnst.stylize(job["content"], job["styles"], out=tmp_path / "ref" / "x.png", **few, **options)
        assert Path(r.output).read_bytes() == (tmp_path / "ref" / "x.png").read_bytes(), r.output
        m = json.loads(Path(r.manifest).read_text())
        assert m["status"] == "done" and m["output"] == r.output and sorted(m) == sorted(ref.manifest)
        assert m["history"] == [{**h, "seconds": m["history"][i]["seconds"]} for i, h in enumerate(ref.history)]
        assert r.worker == next(iter(client.scheduler_info()["workers"])) and r.seconds > 0
    data = _batch_file(out)
    assert data["counts"] == {"done": 3, "failed": 0, "interrupted": 0, "pending": 0}
    assert [j["status"] for j in data["jobs"]] == ["done"] * 3


def test_rerun_skips_done_jobs_and_redoes_changed_ones(tmp_path, inputs, few, client, monkeypatch):
    out = tmp_path / "out"
    jobs = b.grid([inputs["c1"]], [inputs["s1"], inputs["s2"]])
    first = b.batch(jobs, client, out_dir=out, **few)
    stamps = [os.stat(r.output).st_mtime_ns for r in first]
    with monkeypatch.context() as m:  # nothing to recompute: no task reaches the cluster
        m.setattr(cluster, "run_tasks", lambda *a, **k: pytest.fail("a done job was run again"))
        again = b.batch(jobs, client, out_dir=out, **few)
    assert [(r.status, r.skipped) for r in again] == [("done", True)] * 2
    assert [os.stat(r.output).st_mtime_ns for r in again] == stamps
    assert [r.worker for r in again] == [r.worker for r in first]  # carried over from batch.json
    changed = b.batch(jobs, client, out_dir=out, **few.but(style_weight=10.0))
    assert [(r.status, r.skipped) for r in changed] == [("done", False)] * 2


def test_style_targets_and_net_are_shared_between_jobs(tmp_path, inputs, few, client, monkeypatch):
    from scratchnst.core import objective

    calls = []
    real = objective.style_grams
    monkeypatch.setattr("scratchnst.app.picture.targets.style_grams", lambda *a, **k: calls.append(1) or real(*a, **k))
    loads = []
    real_load = cluster.WorkerCache.net
    monkeypatch.setattr(cluster.WorkerCache, "net", lambda self, s: loads.append(1) or real_load(self, s))
    cluster.WORKER_CACHE.nets.clear()
    results = b.batch(b.grid([inputs["c1"], inputs["c2"]], [inputs["s1"]]), client, out_dir=tmp_path / "out", **few)
    assert [r.status for r in results] == ["done", "done"]
    assert len(calls) == 1  # one style at one size: its Gram targets computed once for both jobs
    assert len(loads) == 2 and len(cluster.WORKER_CACHE.nets) == 1  # asked per job, loaded once


def test_worker_that_cannot_see_a_path_fails_in_one_line(tmp_path, inputs, few, client, monkeypatch):
    monkeypatch.setattr(cluster, "check_paths", lambda readable, writable: f"cannot read {readable[0]}")
    with pytest.raises(ScratchnstError, match=r"^worker \S+ cannot read .*c1.png: batch needs every input and output on storage all workers share$"):
        b.batch(b.grid([inputs["c1"]], [inputs["s1"]]), client, out_dir=tmp_path / "out", **few)


# -- command line, local process cluster ----------------------------------------------------------


def test_one_bad_input_fails_alone(tmp_path, inputs, few, run_cli):
    bad = tmp_path / "in" / "broken.png"
    bad.write_text("these are not pixels")
    lines = [{"content": inputs["c1"], "styles": inputs["s1"]}, {"content": str(bad), "styles": inputs["s1"]},
             {"content": inputs["c2"], "styles": inputs["s1"], "size": 0}, {"content": inputs["c2"], "styles": inputs["s1"], "sise": 32}]
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    r = run_cli("batch", "--jobs", "jobs.jsonl", "-o", "out", "--workers", "1", *few.argv, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"scratchnst: batch: 4 jobs: 1 done, 3 failed; see {Path('out') / 'batch.json'}"
    jobs = _batch_file(tmp_path / "out")["jobs"]
    assert [j["status"] for j in jobs] == ["done", "failed", "failed", "failed"]
    # the messages stylize gives for the same input
    stylize = run_cli("stylize", str(bad), inputs["s1"], "-o", str(tmp_path / "x.png"), cwd=tmp_path)
    assert jobs[1]["error"] == stylize.stderr.strip().removeprefix("scratchnst: error: ")
    assert jobs[2]["error"] == "--size must be a whole number > 0 (got 0)"
    assert jobs[3]["error"].startswith("unknown option 'sise'")
    assert [j["line"] for j in jobs] == [1, 2, 3, 4] and jobs[1]["worker"].startswith("tcp://127.0.0.1:")


def test_unreachable_scheduler_is_one_line(tmp_path, inputs, few, run_cli):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    r = run_cli("batch", "--contents", inputs["c1"], "--styles", inputs["s1"], "-o", "out", "--scheduler", address, *few.argv, cwd=tmp_path)
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"scratchnst: error: cannot connect to the Dask scheduler at {address} ("), line


@pytest.fixture
def ctrl_c_when(start_cli, wait_until):
    """ctrl_c_when(args, cwd, ready, what): start `scratchnst batch ARGS` in its own process group and,
    once `ready()`, send the group SIGINT as a terminal's Ctrl-C does (the client and its local
    workers); (exit code, stderr)."""

    def ctrl_c(args, cwd, ready, what: str) -> tuple[int, str]:
        proc = start_cli("batch", *args, cwd=cwd, new_session=True)
        wait_until(ready, proc=proc, what=what)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err

    return ctrl_c


def _manifest_says(path: Path, status: str, iterations: int = 1) -> bool:
    """Whether the manifest at `path` records `status` with at least `iterations` iterations."""
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return m.get("status") == status and len(m.get("history", [])) >= iterations


def test_ctrl_c_saves_running_jobs_and_a_rerun_resumes_them(tmp_path, inputs, tiny, ctrl_c_when):
    """The long job (Adam, which never stops early, for ten million iterations) is provably still
    running when each Ctrl-C lands: its manifest says so, and it cannot finish within the test's
    bounded waits. The short job waits behind it on the one worker, then runs beside it on two."""
    long = {"content": inputs["c1"], "styles": inputs["s1"], "iterations": 10_000_000, "optimizer": "adam", "checkpoint_every": 1}
    short = {"content": inputs["c2"], "styles": inputs["s1"], "iterations": 3}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(long) + "\n" + json.dumps(short) + "\n")
    args = ["--jobs", "jobs.jsonl", "-o", "out", *tiny.but(iterations=None).argv]  # each job its own iterations
    out = tmp_path / "out"
    running = out / "c1__s1.json"
    code, err = ctrl_c_when([*args, "--workers", "1"], tmp_path, lambda: _manifest_says(running, "running"),
                            "the long job to run")
    assert code == 130 and "Traceback" not in err, err
    jobs = _batch_file(out)["jobs"]
    assert [j["status"] for j in jobs] == ["interrupted", "pending"], jobs
    first = json.loads(running.read_text())
    assert first["status"] == "interrupted" and Path(first["checkpoint"]).is_file() and first["history"]
    n = len(first["history"])

    def resumed_and_short_done():
        data = json.loads((out / "batch.json").read_text()) if (out / "batch.json").exists() else {"jobs": []}
        return [j["status"] for j in data["jobs"]][1:] == ["done"] and _manifest_says(running, "running", n + 1)

    code, err = ctrl_c_when([*args, "--workers", "2"], tmp_path, resumed_and_short_done,
                            "the short job done and the long one resumed")
    assert code == 130 and "Traceback" not in err, err
    assert [j["status"] for j in _batch_file(out)["jobs"]] == ["interrupted", "done"]
    again = json.loads(running.read_text())
    assert again["status"] == "interrupted" and len(again["history"]) > n
    assert again["history"][:n] == first["history"]  # continued from the checkpoint, not started again
    assert [h["iteration"] for h in again["history"]] == list(range(1, len(again["history"]) + 1))


# Sent to the first worker (conftest's run_on_workers): from its 7th progress poll on, the job's
# iteration never ends there, so the job is provably unfinished when that worker is killed.
HOLD_AT_ITERATION_7 = """
import time
from scratchnst.app import cluster

real, calls = cluster.Interrupt.poll, [0]

def poll(self, entry=None):
    calls[0] += 1
    if calls[0] >= 7:
        time.sleep(600)
    return real(self, entry)

cluster.Interrupt.poll = poll
"""


def test_killed_worker_job_completes_on_another(tmp_path, inputs, tiny, dask_processes, start_cli, wait_until):
    address = dask_processes.scheduler()
    first = dask_processes.worker("first")
    dask_processes.run_on_workers(HOLD_AT_ITERATION_7)
    args = ["--contents", inputs["c1"], "--styles", inputs["s1"], "-o", "out", "--scheduler", address,
            *tiny.but(iterations=30, checkpoint_every=5).argv]
    run = start_cli("batch", *args, cwd=tmp_path)
    wait_until(lambda: _manifest_says(tmp_path / "out" / "c1__s1.json", "running", 5), proc=run,
               what="the checkpoint at iteration 5")  # checkpointed at 5, held at 7
    dask_processes.worker("second")
    first.kill()  # SIGKILL mid-job: Dask moves the task to the other worker
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    [job] = _batch_file(tmp_path / "out")["jobs"]
    first_address = re.search(r"Start worker at:\s+(\S+)", (tmp_path / "first.log").read_text()).group(1)
    assert job["status"] == "done" and job["worker"].startswith("tcp://127.0.0.1:") and job["worker"] != first_address
    m = json.loads(Path(job["manifest"]).read_text())
    assert m["status"] == "done" and [h["iteration"] for h in m["history"]] == list(range(1, 31))
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left
    ref = scratchnst.stylize(inputs["c1"], [inputs["s1"]], out=tmp_path / "ref.png", **tiny.but(iterations=30))
    assert ref.status == "done"
    assert (tmp_path / "out" / "c1__s1.png").read_bytes() == (tmp_path / "ref.png").read_bytes()
