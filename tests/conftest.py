"""Shared fixtures: a seeded `rng`, the real VGG-16 weights for tests marked `weights` (its path, the
environment that points at it, the loaded net), an in-process Dask cluster, real Dask scheduler and
worker processes on 127.0.0.1 for the batch tests, small generated pictures, the tiny run's options,
the command line in a subprocess (run to its end, or started and held still at a known point), a
bounded wait, and the check of a refused run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
from PIL import Image

from scratchnst.errors import WeightsError
from scratchnst.app.files.weights import load_vgg16, resolve_weights

# A suite started in the background by a shell without job control (`cmd &` in a script, nohup, CI
# runners) inherits SIGINT ignored, and every process it starts would too: the tests that send Ctrl-C
# to a run would see it ignored. A Python handler here becomes SIGINT's default in each child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded generator, so every test sees the same numbers."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def vgg_weights_path() -> Path:
    """Path of the verified real weights, fetched on first use (`weights fetch`'s route).

    A failure to get them fails the tests that need them: CI must prove the fetch works.
    """
    try:
        return resolve_weights()
    except WeightsError as e:
        pytest.fail(f"real VGG-16 weights unavailable: {e}")


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client():
    """A distributed.Client on an in-process cluster of one one-thread worker (tasks run one after
    another); inproc:// comms, so nothing but the HTTP endpoint (on 127.0.0.1) opens a socket."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0",
                      worker_dashboard_address="127.0.0.1:0") as lc, Client(lc, timeout=30) as c:
        yield c


class DaskProcesses:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1, run in `folder` (their logs there,
    this checkout's package importable, the environment as it is when each starts)."""

    def __init__(self, folder: Path):
        self.folder, self.procs = folder, []
        self.scheduler_file = folder / "scheduler.json"

    def _start(self, *args, log: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.folder / log, "w") as f:  # a log file, not a pipe nobody reads (it could fill and block)
            proc = subprocess.Popen([str(Path(sys.executable).with_name("dask")), *args], cwd=self.folder, env=env,
                                    stdout=f, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def _wait_for(self, proc, log: str, ready, timeout: float = 60) -> None:
        wait_until(ready, timeout, proc=proc, what=f"the process logging to {log} to be ready", log=self.folder / log)

    def scheduler(self) -> str:
        """Start the scheduler; its address once it listens."""
        proc = self._start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                           "--scheduler-file", str(self.scheduler_file), log="scheduler.log")
        self._wait_for(proc, "scheduler.log", self.scheduler_file.exists)
        return json.loads(self.scheduler_file.read_text())["address"]

    def worker(self, name: str, *options: str) -> subprocess.Popen:
        """Start a one-thread worker (no nanny) named `name`, with `dask worker` options besides,
        logging to NAME.log; back once it has registered with the scheduler."""
        log = f"{name}.log"
        proc = self._start("worker", "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard",
                           "--death-timeout", "60", "--scheduler-file", str(self.scheduler_file), "--name", name,
                           *options, log=log)
        self._wait_for(proc, log, lambda: "Registered to:" in (self.folder / log).read_text())
        return proc

    def run_on_workers(self, code: str) -> None:
        """Run the Python `code` in every worker process started so far, in a namespace of its own (a
        test patches what the tasks will call there); sent by a client of this scheduler."""
        from distributed import Client

        with Client(scheduler_file=str(self.scheduler_file), timeout=30) as c:
            c.run(exec, code, {"__name__": "scratchnst_test_hook"})

    def stop(self) -> None:
        """The workers first, each gone before the next (a worker leaving tells the scheduler), then the scheduler."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def dask_processes(tmp_path):
    """A DaskProcesses in tmp_path; whatever it started and is still running is stopped afterwards."""
    procs = DaskProcesses(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


# -- the weights in use --------------------------------------------------------------------------


@pytest.fixture
def weights_env(vgg_weights_path, monkeypatch) -> Path:
    """$SCRATCHNST_WEIGHTS set to the real weights, for the runs of a test (in this process or in the
    subprocesses it starts) that load the net without a --weights of their own."""
    monkeypatch.setenv("SCRATCHNST_WEIGHTS", str(vgg_weights_path))
    return vgg_weights_path


@pytest.fixture(scope="session")
def vgg16(vgg_weights_path) -> Callable:
    """vgg16(backend="auto", dtype="float32", pooling="max", conv="auto"): load_vgg16 on the real
    weights, each kind of net loaded once for the session (tests only read a net's weights)."""
    nets = {}

    def load(backend: str = "auto", dtype: str = "float32", pooling: str = "max", conv: str = "auto"):
        key = (backend, dtype, pooling, conv)
        if key not in nets:
            nets[key] = load_vgg16(vgg_weights_path, backend=backend, dtype=dtype, pooling=pooling, conv=conv)
        return nets[key]

    return load


# -- generated pictures --------------------------------------------------------------------------


class Pictures:
    """Small generated pictures in `folder`: colour waves plus noise (texture for VGG to see), drawn
    from one seeded generator, so a test sees the same pictures on every run."""

    def __init__(self, folder: Path, seed: int = 7):
        self.folder, self.rng = Path(folder), np.random.default_rng(seed)

    def rgb(self, w: int = 48, h: int = 40, rng: np.random.Generator | None = None) -> np.ndarray:
        """A (h, w, 3) uint8 picture (from `rng`, or from this generator)."""
        rng = self.rng if rng is None else rng
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([80 + 60 * np.sin(xx / 3 + c) + 60 * np.cos(yy / 4) for c in range(3)], -1)
        return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)

    def save(self, name: str, w: int = 48, h: int = 40) -> Path:
        """A w x h picture written as folder/NAME (its format by the suffix); its path."""
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.rgb(w, h)).save(path)
        return path


class Pics(NamedTuple):
    content: Path
    style: Path


@pytest.fixture(scope="session")
def make_pictures() -> Callable[..., Pictures]:
    """make_pictures(folder, seed=7): Pictures in any folder (a module-scoped fixture's, say)."""
    return Pictures


@pytest.fixture
def pictures(tmp_path) -> Pictures:
    """Pictures in tmp_path."""
    return Pictures(tmp_path)


@pytest.fixture
def pics(pictures) -> Pics:
    """A 48x40 content and a 40x44 style in tmp_path: (content, style), also by name."""
    return Pics(pictures.save("content.png"), pictures.save("style.png", 40, 44))


def _half_masks(folder: Path, w: int = 48, h: int = 40) -> list[Path]:
    left = np.zeros((h, w), np.uint8)
    left[:, : w // 2] = 255
    paths = [folder / "left.png", folder / "right.png"]
    Image.fromarray(left).save(paths[0])
    Image.fromarray(255 - left).save(paths[1])
    return paths


@pytest.fixture
def two_regions(tmp_path) -> dict:
    """A 48x40 content, two stripy styles far from its palette ("red", "blue") and two complementary
    half masks ("masks": left, right), in tmp_path."""
    yy, xx = np.mgrid[0:40, 0:48]
    content = np.stack([100 + 60 * np.sin(xx / 5), 120 + 50 * np.cos(yy / 4), 90 + 40 * np.sin((xx + yy) / 7)], -1)
    red = np.stack([200 + 50 * np.sin(xx / 2), 40 + 30 * np.sin(yy / 3), 40 + 0 * xx], -1)
    blue = np.stack([40 + 0 * xx, 60 + 30 * np.cos(xx / 3), 200 + 50 * np.sin(yy / 2)], -1)
    paths = {}
    for name, a in (("content", content), ("red", red), ("blue", blue)):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(paths[name])
    paths["masks"] = _half_masks(tmp_path)
    return paths


# -- the tiny run --------------------------------------------------------------------------------


class Run(dict):
    """A run's options: the dict itself as keyword arguments (`stylize(..., **run)`), `.argv` as
    command-line flags; `.but(...)` a copy with some changed."""

    @property
    def argv(self) -> list[str]:
        flags = []
        for key, value in self.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                flags.append(flag)
            elif isinstance(value, (tuple, list)):
                flags += [flag, ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)]
            elif value is not False and value is not None:
                flags += [flag, str(value)]
        return flags

    def but(self, **changes) -> "Run":
        return Run({**self, **changes})


TINY = Run(size=32, iterations=1, scales=(1.0,), quiet=True)


@pytest.fixture(scope="session")
def tiny() -> Run:
    """The smallest whole stylize run: --size 32 --iterations 1 --scales 1 --quiet."""
    return TINY


# -- the command line in a subprocess, and waiting for it ----------------------------------------

# The longest a test waits for a subprocess or a state: reaching it is a failure, never a verdict on
# how fast the machine is.
DEADLINE_S = 120


def _env(extra: dict | None) -> dict:
    """This environment with `extra` over it, this checkout's package importable (a PYTHONPATH in
    `extra` comes first)."""
    extra = dict(extra or {})
    path = [extra.pop("PYTHONPATH", None), str(REPO), os.environ.get("PYTHONPATH")]
    return {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(filter(None, path))}


def _command(args, code: str | None) -> list[str]:
    return [sys.executable, *(["-c", code] if code else ["-m", "scratchnst"]), *map(str, args)]


@pytest.fixture(scope="session")
def run_cli() -> Callable:
    """run_cli(*args, cwd=, env=None, timeout=DEADLINE_S, code=None): `python -m scratchnst ARGS` run
    to its end (output captured as text). env: variables over this environment (a PYTHONPATH there
    comes before this checkout's); code: Python run in place of `-m scratchnst`, with ARGS in
    sys.argv[1:]."""

    def run(*args, cwd, env: dict | None = None, timeout: float = DEADLINE_S, code: str | None = None):
        return subprocess.run(_command(args, code), cwd=cwd, env=_env(env), capture_output=True, text=True, timeout=timeout)

    return run


# The command line with every objective evaluation held while the file sys.argv[1] exists: the run
# stands still at a known point until a signal arrives (SIGTERM's handler raises KeyboardInterrupt
# in the sleep, as Ctrl-C does; SIGKILL just ends it).
_HOLD = """\
import sys, time
from pathlib import Path
from scratchnst.app.cli import main
from scratchnst.core.objective import NSTObjective

hold, evaluate = Path(sys.argv.pop(1)), NSTObjective.evaluate


def held(self, *args, **kwargs):
    while hold.exists():
        time.sleep(1)
    return evaluate(self, *args, **kwargs)


NSTObjective.evaluate = held
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def start_cli() -> Callable:
    """start_cli(*args, cwd=, env=None, hold_while=None, new_session=False): `python -m scratchnst
    ARGS` started, its stderr piped (text). hold_while: a path; from the moment it exists, the run's
    next objective evaluation waits for a signal, so what the run has written by then is all it
    writes (no race between a signal and the run's progress). new_session: its own process group
    (os.killpg sends a terminal's Ctrl-C to it and its children). Whatever is still running when the
    test ends is killed."""
    procs = []

    def start(*args, cwd, env: dict | None = None, hold_while: Path | None = None, new_session: bool = False):
        code = None
        if hold_while is not None:
            code, args = _HOLD, (hold_while, *args)
        proc = subprocess.Popen(_command(args, code), cwd=cwd, env=_env(env), stderr=subprocess.PIPE, text=True,
                                start_new_session=new_session)
        procs.append((proc, new_session))
        return proc

    yield start
    for proc, own_group in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL) if own_group else proc.kill()
        proc.wait(timeout=DEADLINE_S)
        if proc.stderr is not None:
            proc.stderr.close()


def wait_until(predicate: Callable[[], object], timeout: float = DEADLINE_S, proc: subprocess.Popen | None = None,
               what: str | None = None, log: Path | None = None) -> None:
    """Poll `predicate` until it holds. Fails, saying what it waited for, when `timeout` seconds pass
    first, or when `proc` exits first (then with its stderr, if piped, or the text of `log`)."""
    what = what or getattr(predicate, "__qualname__", "the condition")
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None and not predicate():
            said = log.read_text() if log is not None else proc.stderr.read() if proc.stderr is not None else ""
            pytest.fail(f"waiting for {what}: the process exited with code {proc.returncode} first\n{said}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"waiting for {what}: not so after {timeout:g} s", pytrace=False)
        time.sleep(0.02)


@pytest.fixture(name="wait_until", scope="session")
def _wait_until() -> Callable:
    """wait_until(predicate, timeout=DEADLINE_S, proc=None, what=None, log=None), the bounded wait."""
    return wait_until


# -- a refused run -------------------------------------------------------------------------------

PRECIOUS = b"precious: an earlier result that must survive"


@pytest.fixture
def out(tmp_path) -> Path:
    """OUT (tmp_path/result.png), holding an earlier result that a refused run must leave untouched."""
    p = tmp_path / "result.png"
    p.write_bytes(PRECIOUS)
    return p


def refused(r: subprocess.CompletedProcess, out: Path | None, *needles: str, code: int = 2) -> None:
    """Exit `code`, exactly one line on stderr naming the problem, no traceback, OUT untouched."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)
    if out is not None:
        assert out.read_bytes() == PRECIOUS
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")], "temp files left behind"


@pytest.fixture(name="refused", scope="session")
def _refused() -> Callable:
    """refused(r, out, *needles, code=2): the check of a run refused for bad input (see above)."""
    return refused
