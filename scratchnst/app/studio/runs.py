"""The studio's files: the images it knows and one folder per run, all under its data folder.

    DATA/session              the id of the server that owns the runs now; a task started by an
                              earlier server stops when it sees another (task.Owner)
    DATA/images/NAME          every image the studio was given, under a name the server chose (the
                              first 16 hex digits of its SHA-256 and the format's suffix), never the
                              uploaded name
    DATA/runs/ID/             one run (ID: its creation time and a random tag, so names sort by age)
        request.json          what was asked: the content's and the styles' NAMEs, the options as
                              given, the validated stylize arguments, when
        inputs/               copies of the images (content.EXT, style-1.EXT, ...): the run's own
        state.json            status, progress, the loss history, an error line; written atomically
                              by the server (queued, failed) and by the task that runs it (the rest)
        out.png, out.json     the picture and the manifest stylize writes (out.ckpt.npz: its checkpoint)
        preview.png           the picture so far, written with each update
        lock                  held (flock) by the process running the run: no two ever write it
        tasks.log             one line as each task takes the lock and one as it lets go of it:
                              "start SESSION PID", "end SESSION STATUS" (who ran the run, when)
        study/                the study panel of the latest picture (study.json and its PNGs)

Everything the server or a task writes goes through files.atomic: a reader sees the old file or the
new one, and a killed writer leaves the old one (preview.png and a running run's state.json without
the fsyncs: they are remade with every update).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from scratchnst.app.files.atomic import atomic_write_bytes
from scratchnst.errors import ScratchnstError

STATUSES = ("queued", "running", "done", "stopped", "failed")
ACTIVE = ("queued", "running")  # a restarted server submits these again
RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
IMAGE_NAME = re.compile(r"[0-9a-f]{16}\.(png|jpg|webp|bmp|tif|gif)")
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif"}
OUT = "out.png"  # the run's picture; out.json its manifest (report.manifest_path)


class NotFound(ScratchnstError):
    """An id or image name the studio does not have (or that could never be one): the server's 404."""


def read_json(path: Path) -> dict | None:
    """The JSON object at `path`; None when there is none (or it is not readable JSON)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, value: dict, *, durable: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=1) + "\n").encode(), durable=durable)


class Run:
    """One run's folder (see the module docstring) and what is recorded in it."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.id = self.folder.name

    @property
    def out(self) -> Path:
        return self.folder / OUT

    @property
    def manifest(self) -> Path:
        return self.folder / "out.json"

    @property
    def preview(self) -> Path:
        return self.folder / "preview.png"

    @property
    def lock_path(self) -> Path:
        return self.folder / "lock"

    @property
    def study_folder(self) -> Path:
        return self.folder / "study"

    def log(self, line: str) -> None:
        """Append `line` to tasks.log (one write of one line: appends never interleave)."""
        with open(self.folder / "tasks.log", "a") as f:
            f.write(f"{time.time():.3f} {line}\n")

    def task_log(self) -> list[str]:
        """tasks.log's lines, without their times."""
        try:
            return [line.split(" ", 1)[1] for line in (self.folder / "tasks.log").read_text().splitlines()]
        except OSError:
            return []

    def request(self) -> dict:
        return read_json(self.folder / "request.json") or {}

    def state(self) -> dict:
        return read_json(self.folder / "state.json") or {"status": "failed", "error": "the run's state record is missing"}

    def write_state(self, status: str, **fields) -> None:
        """Record `status` (one of STATUSES) with `fields` (progress, history, error, ...); a running
        run's record, remade with each update, without the fsyncs (files.atomic)."""
        write_json(self.folder / "state.json", {"status": status, "updated": time.time(), **fields}, durable=status != "running")

    def picture(self) -> Path | None:
        """The latest picture: the output once the run wrote it, else the preview; None before either."""
        for p in (self.out, self.preview):
            if p.is_file():
                return p
        return None

    def inputs(self) -> tuple[str, list[str]]:
        """(content path, style paths) of the run's own copies of its images."""
        r = self.request()
        return str(self.folder / "inputs" / r["content_file"]), [str(self.folder / "inputs" / f) for f in r["style_files"]]

    def summary(self) -> dict:
        """What GET /api/runs/ID answers: the request, the recorded state, the pictures there are."""
        r, state = self.request(), self.state()
        return {
            "id": self.id, "created": r.get("created"), "content": r.get("content"), "styles": r.get("styles"),
            "options": r.get("options"), "args": r.get("args"), **state,
            "has_image": self.picture() is not None, "has_manifest": self.manifest.is_file(),
        }


class Store:
    """The data folder: its images and runs (see the module docstring)."""

    def __init__(self, data: str | os.PathLike):
        self.data = Path(data).expanduser()
        self.images, self.runs = self.data / "images", self.data / "runs"
        for d in (self.images, self.runs, self.data / "tmp"):
            d.mkdir(parents=True, exist_ok=True)

    # -- the owner ---------------------------------------------------------------------------------

    @property
    def session_path(self) -> Path:
        return self.data / "session"

    def claim(self) -> str:
        """Make this server the owner of the runs: a new session id, written to DATA/session."""
        session = secrets.token_hex(8)
        atomic_write_bytes(self.session_path, session.encode())
        return session

    def session(self) -> str | None:
        try:
            return self.session_path.read_text()
        except OSError:
            return None

    # -- images ------------------------------------------------------------------------------------

    def temp_path(self) -> Path:
        """A fresh path under DATA/tmp for an upload being checked."""
        return self.data / "tmp" / secrets.token_hex(8)

    def add_image(self, checked: Path, fmt: str) -> str:
        """Move the checked image file `checked` (PIL format `fmt`) into the library; its name."""
        digest = hashlib.sha256(checked.read_bytes()).hexdigest()[:16]
        name = digest + SUFFIXES.get(fmt, ".png")
        target = self.images / name
        if target.exists():
            checked.unlink()
        else:
            os.replace(checked, target)
        return name

    def image(self, name: str) -> Path:
        """The library's image NAME; NotFound for a name it does not hold or that is no name of ours
        (a `/`, `..` or NUL can never match IMAGE_NAME)."""
        if not isinstance(name, str) or not IMAGE_NAME.fullmatch(name) or not (self.images / name).is_file():
            raise NotFound(f"no image named {name!r} in the studio (GET /api/images lists them)")
        return self.images / name

    def image_names(self) -> list[str]:
        """The library's images, newest first."""
        found = [p for p in self.images.iterdir() if IMAGE_NAME.fullmatch(p.name)]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)]

    # -- runs --------------------------------------------------------------------------------------

    def new_run(self, content: str, styles: list[str], options: dict, args: dict) -> Run:
        """A queued run of the library's images `content` and `styles` with stylize `args` (validated;
        `options`: as the request gave them), its inputs copied into its folder."""
        run_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
        run = Run(self.runs / run_id)
        (run.folder / "inputs").mkdir(parents=True)
        files = []
        for k, name in enumerate([content, *styles]):
            target = f"content{Path(name).suffix}" if k == 0 else f"style-{k}{Path(name).suffix}"
            shutil.copyfile(self.image(name), run.folder / "inputs" / target)
            files.append(target)
        write_json(run.folder / "request.json", {
            "content": content, "styles": styles, "options": options, "args": args, "created": time.time(),
            "content_file": files[0], "style_files": files[1:],
        })
        run.write_state("queued")
        return run

    def run(self, run_id: str) -> Run:
        """Run ID; NotFound for an id it does not hold (or that could be no id: RUN_ID)."""
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id) or not (self.runs / run_id / "request.json").is_file():
            raise NotFound(f"no run {run_id!r} in the studio")
        return Run(self.runs / run_id)

    def all_runs(self) -> list[Run]:
        """Every run, newest first."""
        ids = sorted((p.name for p in self.runs.iterdir() if RUN_ID.fullmatch(p.name) and (p / "request.json").is_file()), reverse=True)
        return [Run(self.runs / i) for i in ids]

    def active(self) -> list[Run]:
        """The runs a server should be running (queued or running), oldest first."""
        return [r for r in reversed(self.all_runs()) if r.state().get("status") in ACTIVE]

    def remove(self, run: Run) -> None:
        shutil.rmtree(run.folder, ignore_errors=True)
