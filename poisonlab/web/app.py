"""`poisonlab serve`: the FastAPI app. Pages are static files (no template engine: the page's script fills
everything in with textContent, so no data ever becomes markup); the API speaks JSON."""

import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .. import PoisonlabError
from ..budget import parse_budget
from .jobs import JobStore, Runner, new_id
from .methods import method_list, method_options
from .limits import Limits
from .uploads import extract_upload
from ..data.loaders import parse_size
from ..report import render_report
from ..report.html import CSP as REPORT_CSP

STATIC = Path(__file__).parent / "static"
CSP = "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
SECRET_FILES = {"noise.npy": "the noise", "cuda-key": "the CUDA key"}
PUBLIC_FIELDS = ("id", "created", "state", "method", "label", "eps", "preset", "resize", "images", "classes",
                 "labelled", "progress", "error", "started", "finished", "previews", "preview_names", "budget",
                 "bound", "generation_seconds", "secrets", "upload_name")


def error(status: int, message: str):
    return JSONResponse({"error": message}, status_code=status)


class UploadLimit:
    """ASGI middleware: refuse request bodies over the limit, by Content-Length and while streaming."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > self.limit:
            return await self._reject(scope, receive, send)
        seen = 0

        async def counting():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise PoisonlabError("upload too large")
            return msg

        try:
            await self.app(scope, counting, send)
        except PoisonlabError:
            await self._reject(scope, receive, send)

    async def _reject(self, scope, receive, send):
        mb = self.limit / (1 << 20)
        await error(413, f"the upload is larger than the limit of {mb:g} MB")(scope, receive, send)


def create_app(root, limits: Limits = Limits(), allowed_hosts=("127.0.0.1", "localhost", "::1", "[::1]"),
               run_jobs: bool = True, worker_env=None) -> FastAPI:
    store = JobStore(root)
    runner = Runner(store, env=worker_env) if run_jobs else None

    @asynccontextmanager
    async def lifespan(app):
        if runner is not None:
            runner.start()
        yield
        if runner is not None:
            await run_in_threadpool(runner.stop)

    app = FastAPI(title="poisonlab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.runner = store, runner
    if "*" not in allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))  # DNS rebinding
    app.add_middleware(UploadLimit, limit=limits.max_upload_bytes)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        # State-changing requests must carry a header that a cross-site form cannot set.
        if request.method in ("POST", "DELETE") and request.headers.get("x-poisonlab") != "1":
            return error(403, "missing X-Poisonlab header (requests must come from the poisonlab page)")
        resp = await call_next(request)
        if "content-security-policy" not in resp.headers:  # the report page brings its own (inline only)
            resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    def job_or_404(job_id):
        try:
            return store.dir(job_id), store.read(job_id)
        except (KeyError, OSError, ValueError):
            return None, None

    def public(job):
        return {k: job.get(k) for k in PUBLIC_FIELDS}

    @app.get("/")
    @app.get("/job/{job_id}")
    def index(job_id: str = ""):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    def static(name: str):
        files = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in files:
            return error(404, "not found")
        return FileResponse(STATIC / name, media_type=files[name])

    @app.get("/api/methods")
    def methods():
        return {"methods": method_list(), "limits": {"max_upload_mb": limits.max_upload_bytes / (1 << 20),
                                                     "max_files": limits.max_files,
                                                     "max_pixels": limits.max_pixels}}

    @app.get("/api/jobs")
    def jobs():
        return {"jobs": [public(j) for j in reversed(store.all())]}

    @app.post("/api/jobs")
    async def submit(request: Request):
        try:
            form = await request.form(max_files=limits.max_files + 1, max_fields=20)
        except PoisonlabError:  # UploadLimit stopped the body mid-way
            return error(413, f"the upload is larger than the limit of {limits.max_upload_bytes / (1 << 20):g} MB")
        except Exception as e:  # noqa: BLE001 -- a malformed body is the client's error, whatever the parser says
            return error(400, f"the upload could not be read: {e}")
        try:
            fields = _settings(form)
        except PoisonlabError as e:
            return error(400, str(e))
        files = [(f.filename or "upload", f.file) for f in form.getlist("files") if hasattr(f, "filename")]
        job_id = new_id()
        tmp = store.jobs / f".{job_id}.upload"
        try:
            # input/train/<class>/...: a class named 'train' or 'test' stays a class, not a split
            found = await run_in_threadpool(extract_upload, files, tmp / "input" / "train", limits)
            if not found.labelled and fields["needs_labels"]:
                raise PoisonlabError(f"{fields['label']} makes one pattern per class: upload a zip with one "
                                     "folder per class (class/image.png), or pick a method that needs no labels")
        except PoisonlabError as e:
            await run_in_threadpool(_rmtree, tmp)
            return error(400, str(e))
        except BaseException:  # a full disk, ...: leave no half-written upload behind
            _rmtree(tmp)
            raise
        finally:
            await form.close()
        fields.pop("needs_labels")
        os.replace(tmp, store.jobs / job_id)
        job = store.create(job_id, {**fields, "images": found.images, "classes": found.classes[:50],
                                    "labelled": found.labelled,
                                    "upload_name": files[0][0] if len(files) == 1 else f"{len(files)} files"})
        if runner is not None:
            runner.wake.set()
        return JSONResponse(public(job), status_code=201)

    @app.get("/api/jobs/{job_id}")
    def status(job_id: str):
        d, job = job_or_404(job_id)
        if job is None:
            return error(404, "no such job (it may have been deleted)")
        job = public(job)
        job["now"] = time.time()
        return job

    @app.delete("/api/jobs/{job_id}")
    def delete(job_id: str):
        d, job = job_or_404(job_id)
        if job is None:
            return error(404, "no such job")
        try:
            store.delete(job_id)
        except PoisonlabError as e:
            return error(409, str(e))
        return {"deleted": job_id}

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str):
        d, job = job_or_404(job_id)
        if job is None:
            return error(404, "no such job")
        if runner is None or not runner.cancel(job_id):
            return error(409, "this job is run by another poisonlab process; stop that one first")
        return {"cancelled": job_id}

    @app.get("/api/jobs/{job_id}/preview/{k}/{kind}.png")
    def preview(job_id: str, k: int, kind: str):
        d, job = job_or_404(job_id)
        if job is None or kind not in ("before", "after", "noise") or not 0 <= k < (job.get("previews") or 0):
            return error(404, "no such preview")
        return FileResponse(d / "preview" / f"{k}_{kind}.png", media_type="image/png")

    @app.get("/api/jobs/{job_id}/download")
    def download(job_id: str):
        d, job = job_or_404(job_id)
        if job is None or job["state"] != "done":
            return error(404, "the protected images are not ready")
        return FileResponse(d / "protected.zip", media_type="application/zip",
                            filename=f"protected-{job['method']}-{job_id[:6]}.zip")

    @app.get("/api/jobs/{job_id}/report")
    async def report(job_id: str):
        """The job's `poisonlab report` page (private: made with the noise, it shows originals)."""
        d, job = job_or_404(job_id)
        if job is None or job["state"] != "done":
            return error(404, "the report is not ready")
        try:
            page = await run_in_threadpool(render_report, d / "out")
        except PoisonlabError as e:
            return error(500, str(e))
        return HTMLResponse(page, headers={"Content-Security-Policy": REPORT_CSP})

    @app.get("/api/jobs/{job_id}/secret/{kind}")
    def secret(job_id: str, kind: str):
        d, job = job_or_404(job_id)
        if job is None or job["state"] != "done" or kind not in SECRET_FILES or kind not in (job.get("secrets") or []):
            return error(404, "no such secret for this job")
        return FileResponse(d / f"out.{kind}", media_type="application/octet-stream",
                            filename=f"PRIVATE-{job['method']}-{job_id[:6]}.{kind}")

    def _settings(form) -> dict:
        catalogue = {m["name"]: m for m in method_list()}
        name = str(form.get("method") or "")
        if name not in catalogue:
            raise PoisonlabError(f"unknown method {name!r}; choose one of {', '.join(catalogue)}")
        m = catalogue[name]
        preset = str(form.get("preset") or m["presets"][0])
        method_options(name, preset)  # refuses unknown presets
        eps = None
        if m["norm"] == "linf" and form.get("eps"):
            levels = parse_budget(str(form.get("eps")), "strength", allow_zero=False, maximum=64)
            eps = f"{levels:g}/255"
        resize = str(form.get("resize") or "").strip() or None
        if resize:
            h, w = parse_size(resize)
            if h * w > limits.max_pixels:
                raise PoisonlabError(f"resize {resize} is larger than the pixel limit")
            resize = f"{h}x{w}"
        return {"method": name, "label": m["label"], "eps": eps, "preset": preset, "resize": resize,
                "needs_labels": m["needs_labels"]}

    return app


def _rmtree(p):
    import shutil
    shutil.rmtree(p, ignore_errors=True)


def serve(host="127.0.0.1", port=8765, root=None, limits: Limits = Limits(), log=print):
    import socket
    import uvicorn
    try:  # a clear one-line error instead of uvicorn's exit when the port is taken
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no conflict
            probe.bind((host, port))
    except OSError as e:
        raise PoisonlabError(f"cannot listen on {host}:{port}: {e.strerror or e} (choose another --port)") from None
    root = Path(root or os.environ.get("POISONLAB_WEB_ROOT") or Path.home() / ".local/share/poisonlab/web")
    loopback = host in ("127.0.0.1", "localhost", "::1")
    hosts = ("127.0.0.1", "localhost", "::1", "[::1]") if loopback else ("*",)
    if not loopback:
        log(f"poisonlab: warning: serving on {host}: anyone who can reach this address can upload and download")
    app = create_app(root, limits=limits, allowed_hosts=hosts)
    log(f"poisonlab: serving on http://{'[' + host + ']' if ':' in host else host}:{port}/ (jobs in {root}); Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, log_level="warning")


__all__ = ["create_app", "serve"]
