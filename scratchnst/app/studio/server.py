"""`scratchnst serve`: the studio's HTTP server (tornado) and what it asks of Dask.

The server never does the numerics: each run is a Dask task (task.run_task) on the local cluster or
the one at --scheduler, submitted at once (Dask queues what the workers cannot take yet), and the
page learns how it goes from what the task records in the run's folder (runs.py): the state, the
preview, the manifest. So a restarted server knows every run, and a test waits on recorded state.

The HTTP API is documented in the README ("Studio"). Every refusal is a 4xx JSON {"error": one line};
the token (any --host but 127.0.0.1, or --token) is checked on every /api/ request, as a header
`Authorization: token T` or a `token=T` query parameter (EventSource and <img> cannot send headers).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import mimetypes
import os
import secrets
import webbrowser
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image
import tornado.httputil
import tornado.iostream
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from scratchnst.app import cluster
from scratchnst.app.studio import task
from scratchnst.app.studio.inputs import (
    CHECKPOINT_EVERY, DEFAULT_HOST, DEFAULT_PORT, PREVIEW_EVERY_S, Limits, Refused, check_image, run_args,
)
from scratchnst.app.studio.runs import ACTIVE, IMAGE_NAME, NotFound, Run, Store, read_json
from scratchnst.errors import ScratchnstError, one_line

STREAM_POLL_S = 0.1  # how often an event stream looks at the run's recorded state
DEATH_TIMEOUT_S = 10  # a local worker whose server was killed ends itself after this
SHUTDOWN_WAIT_S = 30  # on Ctrl-C: how long running tasks get to save a checkpoint
STATIC = resources.files("scratchnst.app.studio") / "static"


def default_data() -> Path:
    """Where the studio keeps its images and runs: $XDG_DATA_HOME/scratchnst/studio (~/.local/share/...)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "scratchnst" / "studio"


def stop_event_name(run_id: str) -> str:
    return f"scratchnst-studio-stop-{run_id}"


class Studio:
    """The server's side of the runs: the store, the Dask client, the runs' futures."""

    def __init__(self, store: Store, client, *, limits: Limits, preview_every: float, checkpoint_every: int):
        self.store, self.client, self.limits = store, client, limits
        self.preview_every, self.checkpoint_every = preview_every, checkpoint_every
        self.session = store.claim()
        self.futures, self.studies = {}, {}  # run id -> the Dask future of its run / its study
        self.examples = {self.add_example(f"{role}.jpg"): role for role in ("content", "style")}  # name -> its role

    def add_example(self, name: str) -> str:
        """The embedded example image `name` in the library; its name there."""
        path = self.store.temp_path()
        path.write_bytes((resources.files("scratchnst.assets") / name).read_bytes())
        return self.store.add_image(path, "JPEG")

    # -- images -----------------------------------------------------------------------------------

    def add_upload(self, body: bytes, what: str) -> str:
        """Check an uploaded image (inputs.check_image) and keep it; its name in the library."""
        path = self.store.temp_path()
        try:
            path.write_bytes(body)
            return self.store.add_image(path, check_image(path, what, self.limits))
        finally:
            path.unlink(missing_ok=True)

    def images(self) -> list[dict]:
        found = []
        for name in self.store.image_names():
            try:
                size = image_size(self.store.images / name)
            except OSError:
                continue
            found.append({"name": name, "width": size[0], "height": size[1], "example": self.examples.get(name)})
        return found

    # -- runs -------------------------------------------------------------------------------------

    def create(self, content: str, styles: list, options) -> Run:
        """A new queued run, submitted; Refused/ScratchnstError for a bad request."""
        if not isinstance(styles, list) or not styles:
            raise ScratchnstError("give at least one style image")
        for name in [content, *styles]:
            if not isinstance(name, str) or not IMAGE_NAME.fullmatch(name):
                raise ScratchnstError(f"{name!r} is not the name of a studio image (GET /api/images lists them)")
            self.store.image(name)
        args = run_args(options, len(styles), self.limits, self.checkpoint_every)
        active = sum(r.state().get("status") in ACTIVE for r in self.store.all_runs())
        if active >= self.limits.queued:
            raise Refused(f"{active} runs are queued or running, this studio's limit (serve --max-queued); stop one or wait", 429)
        run = self.store.new_run(content, styles, options, args)
        self.submit(run)
        return run

    def submit(self, run: Run) -> None:
        """Hand the run to Dask (task.run_task); a task that raises marks the run failed."""
        future = self.client.submit(
            task.run_task, str(run.folder), str(self.store.data), self.session, stop_event_name(run.id), self.preview_every,
            key=f"studio-run-{run.id}-{secrets.token_hex(4)}", pure=False,
        )
        self.futures[run.id] = future
        cluster.settle_when_done(future, run.id, self._finished, self._failed)

    def _finished(self, run_id: str, _status) -> None:
        self.futures.pop(run_id, None)

    def _failed(self, run_id: str, line: str) -> None:
        if self.futures.pop(run_id, None) is None:  # cancelled by stop(): stopped, not failed
            return
        run = Run(self.store.runs / run_id)
        if (run.folder / "request.json").is_file():
            state = run.state()
            run.write_state("failed", error=line, **{k: state.get(k) for k in ("progress", "history", "total")})

    def stop(self, run: Run) -> None:
        """Ask the run to stop (it keeps what it has); a queued one is stopped here."""
        from distributed import Event  # lazy: Dask is loaded by the client already

        Event(stop_event_name(run.id), client=self.client).set()
        state = run.state()
        if state.get("status") == "queued":
            future = self.futures.pop(run.id, None)
            if future is not None:
                future.cancel()
            run.write_state("stopped", **{k: state.get(k) for k in ("progress", "history", "total")})

    async def delete(self, run: Run) -> None:
        """Stop the run, wait for its task to return (bounded), remove its folder."""
        self.stop(run)
        future = self.futures.get(run.id)
        if future is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, lambda: future.result(timeout=cluster.INTERRUPT_WAIT_S))
            except Exception:  # failed, cancelled or too slow: the folder goes all the same
                pass
        self.store.remove(run)

    def study(self, run: Run, refresh: bool) -> tuple[int, dict]:
        """(HTTP status, body) of the run's study panel: 200 and study.json, or 202 while one is made
        (on a worker: task.study_task) — for the latest picture when asked to `refresh` or when there is none."""
        picture = run.picture()
        if picture is None:
            raise Refused("the run has no picture yet", 409)
        pending = self.studies.get(run.id)
        if pending is not None and not pending.done():
            return 202, {"status": "computing"}
        if pending is not None:
            self.studies.pop(run.id)
            if pending.status == "error":
                raise Refused(f"the study failed: {cluster.failure_line(pending.exception())}", 409)
        found = read_json(run.study_folder / "study.json")
        if found is not None and (found.get("picture") == task.picture_tag(picture) or not refresh):
            return 200, found
        self.studies[run.id] = self.client.submit(task.study_task, str(run.folder), key=f"studio-study-{run.id}-{secrets.token_hex(4)}",
                                                  pure=False, priority=10)
        return 202, {"status": "computing"}

    def hand_over(self) -> None:
        """On shutdown: give up the runs (a new session id: running tasks save a checkpoint and leave
        their runs "running", for the next server to resume), waiting up to SHUTDOWN_WAIT_S for them."""
        from distributed import wait  # lazy: Dask is loaded by the client already

        self.store.claim()
        try:
            wait(list(self.futures.values()), timeout=SHUTDOWN_WAIT_S)
        except Exception:  # TimeoutError, or a future already gone with the cluster
            pass


def image_size(path: Path) -> tuple[int, int]:
    """The (width, height) of a library image, from its header."""
    with Image.open(path) as img:
        return img.size


# -- HTTP ------------------------------------------------------------------------------------------


class Api(tornado.web.RequestHandler):
    """The base of every /api/ handler: the host, origin and token checks, JSON answers and errors."""

    def initialize(self, studio: Studio, settings: dict):
        self.studio, self.server = studio, settings

    def prepare(self):
        host = self.request.host_name
        if self.server["token"] is None and host not in self.server["hosts"]:  # DNS rebinding (a token stops it otherwise)
            raise Refused(f"this studio answers to {', '.join(sorted(self.server['hosts']))}, not {host!r}", 403)
        origin = self.request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.request.host:
            raise Refused("cross-origin requests are refused (no CORS)", 403)
        token = self.server["token"]
        if token is not None:
            given = self.request.headers.get("Authorization", "").removeprefix("token ").strip() or self.get_query_argument("token", "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise Refused("this studio needs its token (printed by serve): ?token=... or the header Authorization: token ...", 401)

    def answer(self, value, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(value))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, Refused):
            status_code, message = exc.status, one_line(exc)
        elif isinstance(exc, NotFound):
            status_code, message = 404, one_line(exc)
        elif isinstance(exc, ScratchnstError):
            status_code, message = 400, one_line(exc)
        elif isinstance(exc, tornado.web.HTTPError):
            message = exc.log_message or self._reason
        else:
            message = f"internal error ({cluster.failure_line(exc)})" if exc is not None else self._reason
        self.set_status(status_code)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": message}))

    def log_exception(self, typ, value, tb):
        if not isinstance(value, ScratchnstError):  # a user's mistake is answered, not logged as a bug
            super().log_exception(typ, value, tb)

    def run(self, run_id: str) -> Run:
        return self.studio.store.run(run_id)

    def send_file(self, path: Path, content_type: str, download: str | None = None) -> None:
        """The file at `path` with an ETag (304 when the client has it)."""
        tag = f'"{task.picture_tag(path)}"'
        self.set_header("ETag", tag)
        self.set_header("Cache-Control", "no-cache")
        if self.request.headers.get("If-None-Match") == tag:
            self.set_status(304)
            self.finish()
            return
        self.set_header("Content-Type", content_type)
        if download:
            self.set_header("Content-Disposition", f'attachment; filename="{download}"')
        self.finish(path.read_bytes())


class Uploads(Api):
    """A handler whose POST carries images: the body is counted as it arrives and refused (413)
    past serve's --max-upload, before it is held whole."""

    def prepare(self):
        super().prepare()
        if self.request.method != "POST":
            return
        limit = self.studio.limits.upload_bytes
        self.request.connection.set_max_body_size(limit + 2**16)  # tornado's own limit, just above ours
        length = self.request.headers.get("Content-Length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise Refused(f"the request is {length} bytes, over this studio's limit of {limit:,} (serve --max-upload)", 413)
        self.chunks, self.received = [], 0

    def data_received(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received <= self.studio.limits.upload_bytes:
            self.chunks.append(chunk)

    def body(self) -> bytes:
        if self.received > self.studio.limits.upload_bytes:
            raise Refused(f"the request is over this studio's limit of {self.studio.limits.upload_bytes:,} bytes (serve --max-upload)", 413)
        return b"".join(self.chunks)

    def form(self) -> tuple[dict, dict]:
        """(fields, files) of a multipart/form-data body."""
        fields, files = {}, {}
        content_type = self.request.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ScratchnstError("send the images as multipart/form-data")
        tornado.httputil.parse_body_arguments(content_type, self.body(), fields, files)
        return fields, files

    async def keep(self, body: bytes, what: str) -> str:
        """An uploaded image checked and kept (decoded on a thread: the server goes on serving)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.studio.add_upload, body, what)


@tornado.web.stream_request_body
class ImagesHandler(Uploads):
    def get(self):
        self.answer(self.studio.images())

    async def post(self):
        _, files = self.form()
        if len(files.get("image", [])) != 1:
            raise ScratchnstError("send one image file as the form field 'image'")
        self.answer({"name": await self.keep(files["image"][0].body, "image")}, 201)


class ImageHandler(Api):
    def get(self, name: str):
        path = self.studio.store.image(name)
        self.send_file(path, mimetypes.guess_type(path.name)[0] or "application/octet-stream")


@tornado.web.stream_request_body
class RunsHandler(Uploads):
    def get(self):
        self.answer([r.summary() for r in self.studio.store.all_runs()])

    async def post(self):
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            content, styles, options = await self.from_form()
        else:
            request = self.json_body()
            content, styles, options = request.get("content"), request.get("styles"), request.get("options", {})
        run = self.studio.create(content, styles, options)
        self.answer({"id": run.id}, 201)

    def json_body(self) -> dict:
        try:
            request = json.loads(self.body() or b"null")
        except ValueError as exc:
            raise ScratchnstError(f"the request body is not JSON ({one_line(exc)})") from None
        if not isinstance(request, dict):
            raise ScratchnstError('send {"content": NAME, "styles": [NAME, ...], "options": {...}} or a multipart form')
        return request

    async def from_form(self) -> tuple[str, list, dict]:
        fields, files = self.form()
        if len(files.get("content", [])) != 1 or not files.get("style"):
            raise ScratchnstError("send one 'content' image file and one or more 'style' image files")
        try:
            options = json.loads(fields.get("options", [b"{}"])[0] or b"{}")
        except ValueError as exc:
            raise ScratchnstError(f"options is not JSON ({one_line(exc)})") from None
        run_args(options, len(files["style"]), self.studio.limits, self.studio.checkpoint_every)  # before any image is kept
        content = await self.keep(files["content"][0].body, "content")
        styles = [await self.keep(f.body, f"style {k}") for k, f in enumerate(files["style"], 1)]
        return content, styles, options


class RunHandler(Api):
    def get(self, run_id: str):
        self.answer(self.run(run_id).summary())

    async def delete(self, run_id: str):
        await self.studio.delete(self.run(run_id))
        self.answer({"deleted": run_id})


class StopHandler(Api):
    def post(self, run_id: str):
        run = self.run(run_id)
        self.studio.stop(run)
        self.answer({"stopping": run_id}, 202)


class PictureHandler(Api):
    def get(self, run_id: str):
        path = self.run(run_id).picture()
        if path is None:
            raise NotFound(f"run {run_id} has no picture yet")
        self.send_file(path, "image/png", f"scratchnst-{run_id}.png" if self.get_query_argument("download", "") else None)


class ManifestHandler(Api):
    def get(self, run_id: str):
        run = self.run(run_id)
        if not run.manifest.is_file():
            raise NotFound(f"run {run_id} has no manifest yet")
        self.send_file(run.manifest, "application/json", f"scratchnst-{run_id}.json" if self.get_query_argument("download", "") else None)


class StudyHandler(Api):
    def get(self, run_id: str):
        status, body = self.studio.study(self.run(run_id), refresh=bool(self.get_query_argument("refresh", "")))
        self.answer(body, status)


class StudyPictureHandler(Api):
    def get(self, run_id: str, name: str):
        path = self.run(run_id).study_folder / name
        if not name.endswith(".png") or "/" in name or name.startswith(".") or not path.is_file():
            raise NotFound(f"no study picture {name!r}")
        self.send_file(path, "image/png")


class EventsHandler(Api):
    """Server-sent events: `state` messages, each {"status", "progress", "total", "error", "updated", "from",
    "entries": the history entries since the last message (from index "from")}, one whenever the
    run's recorded state changes; the stream ends after the message of an ended run."""

    async def get(self, run_id: str):
        run = self.run(run_id)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-store")
        sent, last = 0, None
        try:
            while True:
                try:
                    st = (run.folder / "state.json").stat()
                    mark = (st.st_mtime_ns, st.st_size)
                except OSError:  # deleted
                    self.write("event: end\ndata: {\"status\": \"deleted\"}\n\n")
                    break
                if mark != last:
                    last, state = mark, run.state()
                    history = state.get("history") or []
                    sent = 0 if len(history) < sent else sent
                    message = {k: state.get(k) for k in ("status", "progress", "total", "error", "updated")} | {"from": sent, "entries": history[sent:]}
                    sent = len(history)
                    self.write(f"event: state\ndata: {json.dumps(message)}\n\n")
                    await self.flush()
                    if state.get("status") not in ACTIVE:
                        break
                await asyncio.sleep(STREAM_POLL_S)
            self.finish()
        except tornado.iostream.StreamClosedError:  # the tab was closed: the run goes on
            pass


class NotFoundHandler(Api):
    def prepare(self):
        super().prepare()
        raise NotFound(f"no such path {self.request.path!r} (see the README's Studio section)")


class PageHandler(tornado.web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish((STATIC / "index.html").read_bytes())


def make_app(studio: Studio, *, host: str, token: str | None) -> tornado.web.Application:
    hosts = {host, "127.0.0.1", "localhost"}
    s = {"studio": studio, "settings": {"hosts": hosts, "token": token}}
    run = r"/api/runs/([^/]+)"
    routes = [
        (r"/", PageHandler),
        (r"/static/(studio\.js|studio\.css)", tornado.web.StaticFileHandler, {"path": str(STATIC)}),
        (r"/api/images", ImagesHandler, s),
        (r"/api/images/([^/]+)", ImageHandler, s),
        (r"/api/runs", RunsHandler, s),
        (run, RunHandler, s),
        (run + "/stop", StopHandler, s),
        (run + "/image", PictureHandler, s),
        (run + "/manifest", ManifestHandler, s),
        (run + "/events", EventsHandler, s),
        (run + "/study", StudyHandler, s),
        (run + r"/study/([^/]+)", StudyPictureHandler, s),
        (r"/api/.*", NotFoundHandler, s),
    ]
    return tornado.web.Application(routes, default_handler_class=NotFoundHandler, default_handler_args=s)


def needs_token(host: str, token: str | None) -> str | None:
    """The token the API asks for: `token`, or for any host but 127.0.0.1 a new one; None on 127.0.0.1 without --token."""
    if token is not None:
        if len(token) < 16:
            raise ScratchnstError("--token must be at least 16 characters")
        return token
    return None if host == DEFAULT_HOST else secrets.token_urlsafe(24)


def serve(*, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, data=None, token: str | None = None, scheduler: str | None = None,
          workers: int | None = None, limits: Limits = Limits(), preview_every: float = PREVIEW_EVERY_S,
          checkpoint_every: int = CHECKPOINT_EVERY, open_browser: bool = False) -> None:
    """Run the studio until Ctrl-C (or SIGTERM): resume the runs a killed server left, print the
    address (with the token when there is one), answer the page and the API."""
    token = needs_token(host, token)
    store = Store(data if data is not None else default_data())
    with cluster.client(scheduler, workers=workers, quiet=True, death_timeout_s=DEATH_TIMEOUT_S) as client:
        studio = Studio(store, client, limits=limits, preview_every=preview_every, checkpoint_every=checkpoint_every)
        for run in store.active():
            studio.submit(run)
        try:
            sockets = bind_sockets(port, address=host)
        except OSError as exc:
            raise ScratchnstError(f"cannot listen on {host}:{port} ({one_line(exc)})") from None
        url = f"http://{host}:{sockets[0].getsockname()[1]}/" + (f"?token={token}" if token else "")
        try:
            asyncio.run(_listen(make_app(studio, host=host, token=token), sockets, url, open_browser))
        finally:
            studio.hand_over()


async def _listen(app, sockets, url: str, open_browser: bool) -> None:
    server = HTTPServer(app)
    server.add_sockets(sockets)
    print(url, flush=True)
    if open_browser:
        webbrowser.open(url)
    await asyncio.Event().wait()
