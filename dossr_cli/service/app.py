"""The HTTP API and the web page over one JobQueue (FastAPI: its OpenAPI description comes free).

Every answer that is not an image is JSON; every error is `{"error": "<one line>"}` with the
status that says what kind of failure it is. The token, when the server has one, is checked
on every `/v1/` request; the page itself is static and holds no data.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, File, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dossr_cli import imageio
from dossr_cli.batch.params import JobTooLargeError
from dossr_cli.errors import DossrError, UsageError
from dossr_cli.service import options
from dossr_cli.service.jobs import CANCELLED, DONE, FAILED, FINISHED, Job, JobQueue, QueueFullError, ShuttingDownError
from dossr_cli.service.options import Limits

PAGE = Path(__file__).with_name("page")
KEEPALIVE_SECONDS = 15.0
RETRY_AFTER = 5  # seconds a client refused for a full queue (429) is asked to wait
IDLE_CONNECTION_SECONDS = 30  # a kept-alive connection outlives a Retry-After, so the retry never races its close
FORM_ALLOWANCE = 64 << 10  # a body may pass the upload limit by this much: the form's fields and boundaries
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "tiff": "image/tiff", "bmp": "image/bmp"}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def status_of(failure: DossrError) -> int:
    """The HTTP status of a refusal: too large, a bad request, or a full or closing queue."""
    if isinstance(failure, (imageio.ImageTooLargeError, JobTooLargeError)):
        return 413
    if isinstance(failure, QueueFullError):
        return 429
    if isinstance(failure, ShuttingDownError):
        return 503
    if isinstance(failure, (UsageError, imageio.ImageReadError)):
        return 400
    return 422


class UploadLimit:
    """Refuses a body past `limit` bytes with 413: at once by its Content-Length, else as it arrives."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await error(413, self.message(int(length)))(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, self.message(received))
            return message

        await self.app(scope, counted, send)

    def message(self, size: int) -> str:
        return upload_too_large(size, self.limit - FORM_ALLOWANCE)


def upload_too_large(size: int, limit: int) -> str:
    return (f"the upload is {size} bytes or more, over the server's {limit}-byte limit; send a smaller file or ask "
            "its operator for a larger --max-upload")


class TokenCheck:
    """With a token, every /v1/ request must carry `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is not None and scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                reason = "wrong token" if given else "this server needs a token"
                response = error(401, f"{reason}: send 'Authorization: Bearer <token>' (dossr: --token or "
                                      "DOSSR_TOKEN)", {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def result_headers(job: Job) -> dict[str, str]:
    result = job.result
    assert result is not None
    stem = Path(job.filename or "image").stem or "image"
    name = f"{stem}{job.params.name_suffix()}{imageio.extension(result.format)}"
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
    disposition = f'attachment; filename="{safe}"' + (f"; filename*=UTF-8''{quote(name)}" if safe != name else "")
    return {"Content-Disposition": disposition, "X-Dossr-Job": job.id,
            "X-Dossr-Seed": str(result.seed), "X-Dossr-Size": f"{result.output_size[0]}x{result.output_size[1]}",
            "X-Dossr-Seconds": f"{result.seconds:.3f}", "X-Dossr-Notes": json.dumps(list(result.notes)),
            "Access-Control-Expose-Headers": "Content-Disposition, X-Dossr-Job, X-Dossr-Seed, X-Dossr-Size, "
                                             "X-Dossr-Seconds, X-Dossr-Notes"}


def image_response(job: Job) -> Response:
    assert job.result is not None
    return Response(job.result.data, media_type=MEDIA_TYPES[job.result.format], headers=result_headers(job))


def form_fields(scale: options.Scale = 4.0, width: options.Width = None, height: options.Height = None,
                steps: options.Steps = 5, order: options.Order = 3, t1: options.T1 = 500,
                seed: options.Seed = options.DEFAULTS.seed, color_fix: options.ColorFix = "wavelet",
                format: options.Format = None, quality: options.Quality = None, metadata: options.Metadata = "all",
                tile_size: options.TileSize = "auto", tile_overlap: options.TileOverlap = None) -> dict[str, Any]:
    """The form fields of an upscale request (a dependency, so that both endpoints and the docs share them)."""
    return {"scale": scale, "width": width, "height": height, "steps": steps, "order": order, "t1": t1, "seed": seed,
            "color_fix": color_fix, "format": format, "quality": quality, "metadata": metadata,
            "tile_size": tile_size, "tile_overlap": tile_overlap}


# Module-level, for FastAPI reads the (string) annotations in this module's namespace.
Image = Annotated[UploadFile, File(description="The image: png, jpg, webp, tiff or bmp.")]
Form = Annotated[dict[str, Any], Depends(form_fields)]


def create_app(queue: JobQueue, limits: Limits, model: dict[str, Any], token: str | None = None) -> FastAPI:
    """The API over `queue`; `model` is what GET /v1/model tells (the serve command knows the weights)."""
    # FastAPIOffline: FastAPI whose /docs uses Swagger UI's scripts shipped in its package, not a CDN's, so
    # that the docs work on a machine without the internet. No /redoc: ReDoc fetches its logo from its CDN.
    app = FastAPIOffline(redoc_url=None, title="dossr", version=str(model.get("version", "")),
                         description="DoSSR diffusion super-resolution: one warm model, the options of "
                                     "`dossr upscale`.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, failure: StarletteHTTPException) -> JSONResponse:
        return error(failure.status_code, str(failure.detail), dict(failure.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, failure: RequestValidationError) -> JSONResponse:
        first = failure.errors()[0] if failure.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return error(400, f"{where}: {first.get('msg', 'invalid')}".replace("Field required", "missing")
                     + (f"; got {first['input']!r}" if isinstance(first.get("input"), (str, int, float)) else ""))

    async def submit(image: UploadFile, form: dict[str, Any]) -> Job:
        data = await image.read()
        if len(data) > limits.max_upload:
            raise HTTPException(413, upload_too_large(len(data), limits.max_upload))
        try:
            params = options.make_params(limits, **form)
            filename = image.filename or None
            out_format = params.format or (imageio.format_from_name(filename) if filename else None)
            decoded = await run_in_threadpool(imageio.read_image, data, limits.max_pixels,
                                              f"'{filename}'" if filename else "the upload")
            config = queue.pipe.config
            params.check_cost(*decoded.rgb.shape[:2], out_format or decoded.format, config.upscale,
                              config.pixel_multiple)
            return queue.submit(data, decoded, params, out_format, filename)
        except DossrError as failure:
            headers = {"Retry-After": str(RETRY_AFTER)} if isinstance(failure, QueueFullError) else None
            raise HTTPException(status_of(failure), str(failure), headers) from None

    async def finished(job: Job, request: Request | None = None) -> bool:
        """Waits for the job to end (True), or for the client to go away (False)."""
        event = queue.watch(job)
        try:
            while job.status not in FINISHED:
                event.clear()
                if job.status in FINISHED:
                    break
                try:
                    await asyncio.wait_for(event.wait(), 1.0)
                except asyncio.TimeoutError:
                    if request is not None and await request.is_disconnected():
                        return False
            return True
        finally:
            queue.unwatch(job, event)

    def known(job_id: str) -> Job:
        job = queue.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id} (unknown, or its result expired)")
        return job


    @app.get("/v1/health", summary="Is the server up, and how busy")
    async def health() -> JSONResponse:
        counts = queue.counts()
        if queue.closing:
            return JSONResponse({"status": "stopping", **counts}, status_code=503)
        return JSONResponse({"status": "ok", **counts})

    @app.get("/v1/model", summary="The model, device, limits and option defaults")
    async def model_info() -> dict[str, Any]:
        return {**model, "batch_size": queue.batch_size,
                "limits": {"max_upload": limits.max_upload, "max_pixels": limits.max_pixels,
                           "max_output_pixels": limits.max_output_pixels, "max_queue": limits.max_queue,
                           "request_timeout": limits.request_timeout},
                "defaults": options.defaults()}

    @app.post("/v1/upscale", summary="Upscale one image and wait for it", response_class=Response,
              responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}})
    async def upscale(request: Request, image: Image, form: Form) -> Response:
        job = await submit(image, form)
        try:
            if not await finished(job, request):
                queue.cancel(job.id)  # the client went away: nobody wants the result
                return error(499, "the client closed the connection")
            if job.status == DONE:
                return image_response(job)
            if job.timed_out:
                return error(504, job.error or "timed out")
            if job.status == CANCELLED:
                return error(409, f"job {job.id} was cancelled")
            return error(422, job.error or "failed")
        finally:
            queue.forget(job.id)

    @app.post("/v1/jobs", status_code=202, summary="Queue an image; follow it at /v1/jobs/ID/events")
    async def create_job(image: Image, form: Form) -> JSONResponse:
        job = await submit(image, form)
        return JSONResponse(job.as_json(), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs/{job_id}", summary="A job's status and progress")
    async def job_status(job_id: str) -> dict[str, Any]:
        return known(job_id).as_json()

    @app.get("/v1/jobs/{job_id}/events", summary="A job's events as Server-Sent Events, from its start")
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        job = known(job_id)
        last = request.headers.get("last-event-id", "")
        start = int(last) if last.isdigit() else 0

        async def stream() -> Any:
            sent, event = start, queue.watch(job)
            try:
                while True:
                    event.clear()
                    fresh = job.events[sent:]
                    for number, name, data in fresh:
                        yield f"id: {number}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
                    sent += len(fresh)
                    if fresh and fresh[-1][1] in FINISHED:
                        return
                    try:
                        await asyncio.wait_for(event.wait(), KEEPALIVE_SECONDS)
                    except asyncio.TimeoutError:
                        yield ": ping\n\n"
            finally:
                queue.unwatch(job, event)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/jobs/{job_id}/result", summary="A finished job's image", response_class=Response,
             responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}})
    async def job_result(job_id: str) -> Response:
        job = known(job_id)
        if job.status != DONE or job.result is None:
            detail = f": {job.error}" if job.status == FAILED and job.error else ""
            raise HTTPException(409, f"job {job.id} is {job.status}{detail}; its result exists once it is done")
        return image_response(job)

    @app.delete("/v1/jobs/{job_id}", summary="Cancel a job, or discard its result")
    async def cancel_job(job_id: str) -> dict[str, Any]:
        job = queue.cancel(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id} (unknown, or its result expired)")
        return job.as_json()

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        index = PAGE / "index.html"
        if not index.is_file():
            return error(404, "this installation has no web page; use the API at /docs")
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    if PAGE.is_dir():
        app.mount("/page", StaticFiles(directory=PAGE), name="page")
    app.add_middleware(TokenCheck, token=token)
    app.add_middleware(UploadLimit, limit=limits.max_upload + FORM_ALLOWANCE)
    return app


__all__ = ["create_app", "status_of"]
