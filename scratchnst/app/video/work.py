"""OUT.work/ beside a video's OUT: its finished frames (PNGs) and state.json, until the video is complete.

state.json holds the run's identity (its input, styles, frames and every option that changes a
frame) and a record per finished frame, written after the frame's PNG. A stopped run (Ctrl-C,
kill, crash) keeps them; `--resume` continues with the same identity, at the first unfinished frame.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from scratchnst.app.files.atomic import atomic_write_bytes
from scratchnst.app.picture.settings import comparable_args
from scratchnst.errors import ScratchnstError, one_line

STATE = "state.json"


def work_dir(out: Path) -> Path:
    """OUT.work/ beside OUT: finished frames and their state until the video is complete."""
    return out.with_name(out.name + ".work")


def frame_png(work: Path, k: int, pass_: int | None = None) -> Path:
    """Where frame k's finished PNG is kept: OUT.work/frame_k.png, or in multi-pass mode
    OUT.work/pass_p/frame_k.png for pass p."""
    folder = work if pass_ is None else work / f"pass_{pass_:02d}"
    return folder / f"frame_{k:05d}.png"


def comparable(identity: dict) -> dict:
    """An identity to compare runs by: its args as settings.comparable_args gives them."""
    return {**identity, "args": comparable_args(identity["args"])}


class WorkFolder:
    """The work folder of one video run, whose identity is `identity` (a JSON-ready dict with "args")."""

    def __init__(self, out: Path, identity: dict):
        self.path, self.identity = work_dir(out), identity

    def png(self, k: int, pass_: int | None = None) -> Path:
        return frame_png(self.path, k, pass_)

    def open(self, resume: bool | str) -> list[dict]:
        """The records of the frames already finished (none for a fresh run). resume: False starts
        afresh (refusing a folder that holds an unfinished run), True continues the folder's run
        (refusing one of other inputs or options), "auto" continues it when it is this run and else
        starts afresh in its place."""
        if resume == "auto":
            try:
                return self.finished()
            except ScratchnstError:  # no run there, another run's, or a broken one: this run replaces it
                shutil.rmtree(self.path, ignore_errors=True)
        elif resume:
            return self.finished()
        elif (self.path / STATE).exists():
            raise ScratchnstError(f"{self.path} holds an unfinished run of this output: add --resume to continue it, or delete the folder")
        self.path.mkdir(parents=True, exist_ok=True)
        self.save([])
        return []

    def finished(self) -> list[dict]:
        """The records of the frames the folder holds of this very run; ScratchnstError when it holds
        no run, or one of other inputs or options."""
        state_file = self.path / STATE
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError) as exc:
            raise ScratchnstError(f"{state_file}: no unfinished run to resume ({one_line(exc)})") from None
        if not isinstance(state, dict) or not isinstance(state.get("identity"), dict) or "args" not in state["identity"]:
            raise ScratchnstError(f"{state_file}: not a scratchnst video state file; delete {self.path} to start again")
        ours, theirs = comparable(self.identity), comparable(state["identity"])
        for key, value in ours.items():
            if theirs.get(key) != value:
                raise ScratchnstError(f"{self.path}: --resume with other {key} than the interrupted run; give the same input and options, or delete the folder")
        records = state["frames"]
        if not all(self.png(r["index"], r.get("pass")).is_file() for r in records):
            raise ScratchnstError(f"{self.path}: finished frames are missing from the work folder; delete it to start again")
        return records

    def save(self, records: list[dict], failed: list[dict] | None = None) -> None:
        """state.json: the identity, the finished frames' records and (multi-pass) the frames that failed."""
        data = {"identity": self.identity, "frames": records, **({"failed": failed} if failed else {})}
        atomic_write_bytes(self.path / STATE, (json.dumps(data, indent=1) + "\n").encode())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
