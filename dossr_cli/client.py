"""A client for a running `dossr serve`: its HTTP API (README, /openapi.json) over `requests` alone.

No FastAPI and no torch here, so `dossr upscale --server` and other programs pay for neither.
Every failure is one DossrError line: an unreachable server, a missing token, and the server's
own `{"error": ...}` text for everything else (`ServerError`, which keeps the HTTP status).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import requests

from dossr_cli.errors import DossrError, UsageError

CONNECT_TIMEOUT = 10.0  # seconds to open a connection: a server that is up answers at once
READ_TIMEOUT = 60.0  # seconds of silence on a socket; the event stream pings every 15 s, so this is generous
WAIT_TIMEOUT = 3600.0  # POST /v1/upscale holds the answer until the job ends (the server's own limit is shorter)
TERMINAL_EVENTS = ("done", "failed", "cancelled")
RECONNECTS = 3  # times a broken event stream is picked up again (from the last event id)
QUEUE_WAIT = 600.0  # seconds a submission waits for room in a full queue (429) before it gives up
OPTIONS = ("scale", "width", "height", "steps", "order", "t1", "seed", "color_fix", "format", "quality", "metadata",
           "tile_size", "tile_overlap")

ProgressCallback = Callable[[int, int, int, int], None]  # step, steps, tile, tiles


class ServerError(DossrError):
    """The server answered with an error: `status` is the HTTP status, the message its one-line reason."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # seconds, from a 429's Retry-After


class ServerUnavailable(DossrError):
    """The server cannot be used at all (no answer, or it wants a token): nothing about any one image."""


@dataclass(frozen=True)
class Result:
    """A finished job's image and what the server said about it."""

    data: bytes  # the encoded image, byte for byte what `dossr upscale` writes
    job: dict[str, Any]  # the job's JSON at its end
    format: str
    input_size: tuple[int, int]  # (width, height)
    output_size: tuple[int, int]
    seed: int  # the image's own seed
    seconds: float  # the server's time on the image
    notes: tuple[str, ...]  # what the result could not keep (as `dossr upscale`'s end-of-image notes)
    filename: str | None  # the name the server suggests (Content-Disposition)


class Client:
    """One server at `url` (e.g. http://127.0.0.1:8000/), with its token if it has one; keeps connections alive."""

    def __init__(self, url: str, token: str | None = None, timeout: float = READ_TIMEOUT,
                 queue_wait: float = QUEUE_WAIT) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"the server's address must start with http:// or https://; got {url!r}")
        self.url = url.rstrip("/") + "/"
        self.token = token or None
        self.timeout = timeout
        self.queue_wait = queue_wait
        self.session = requests.Session()
        if self.token:
            self.session.headers["Authorization"] = f"Bearer {self.token}"

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------------ the endpoints

    def health(self) -> dict[str, Any]:
        return self._request("GET", "v1/health").json()

    def model(self) -> dict[str, Any]:
        return self._request("GET", "v1/model").json()

    def submit(self, data: bytes, filename: str | None = None, on_wait: Callable[[str], None] | None = None,
               **options: Any) -> dict[str, Any]:
        """Queue an image (POST /v1/jobs); the job's JSON. The format, unless given, is the one `filename`'s
        extension names, else the image's own.

        A full queue (429) is waited out as the server's Retry-After asks, for up to `queue_wait` seconds,
        so that a loop of clients slows down instead of failing; `on_wait` hears it once."""
        deadline = time.monotonic() + self.queue_wait
        while True:
            try:
                return self._request("POST", "v1/jobs", files=_files(data, filename), data=_form(options)).json()
            except ServerError as error:
                if error.status != 429:
                    raise
                wait = min(max(error.retry_after or 1.0, 0.1), 60.0)
                if time.monotonic() + wait > deadline:
                    raise ServerError(429, f"{error}; it stayed full for {self.queue_wait:g} s") from None
                if on_wait is not None:
                    on_wait(f"the server's queue is full: waiting for room (trying every {wait:g} s)")
                    on_wait = None
                time.sleep(wait)
                # The server may close the idle kept-alive connection just as the wait ends (uvicorn's
                # keep-alive is as long as a Retry-After); a connection lost that way is a lost image.
                self.session.close()

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"v1/jobs/{job_id}").json()

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(name, data) of each of the job's events, from its start to its terminal event.

        A stream that breaks off is picked up again from the last event seen (Last-Event-ID), so
        no event is missed or repeated."""
        last, reconnects = 0, 0
        while True:
            headers = {"Last-Event-ID": str(last)} if last else {}
            response = self._request("GET", f"v1/jobs/{job_id}/events", stream=True, headers=headers)
            try:
                for number, name, data in parse_sse(response.iter_content(chunk_size=None)):
                    last = number or last
                    yield name, json.loads(data) if data else {}
                    if name in TERMINAL_EVENTS:
                        return
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
                broken: Exception | None = error
            else:
                broken = None
            finally:
                response.close()
            reconnects += 1
            if reconnects > RECONNECTS:
                reason = f" ({_one_line(broken)})" if broken else ""
                raise ServerUnavailable(f"the dossr server at {self.url} keeps closing job {job_id}'s event "
                                        f"stream before it ends{reason}; check the server's log")

    def result(self, job_id: str) -> bytes:
        return self._request("GET", f"v1/jobs/{job_id}/result").content

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job, or discard a finished one's result."""
        return self._request("DELETE", f"v1/jobs/{job_id}").json()

    def upscale(self, data: bytes, filename: str | None = None, on_progress: ProgressCallback | None = None,
                on_note: Callable[[str], None] | None = None, **options: Any) -> Result:
        """Submit, follow the job's events (progress and notes as they happen), fetch the result.

        The result is then discarded on the server, which would otherwise keep it for its --result-ttl.
        An interruption (Ctrl-C) cancels the job on the server before it goes on up."""
        job = self.submit(data, filename, on_wait=on_note, **options)
        try:
            end = self._follow(job["id"], on_progress, on_note)
            if end["status"] != "done":
                raise ServerError(422, end.get("error") or f"the job was {end['status']}")
            response = self._request("GET", f"v1/jobs/{job['id']}/result")
        except BaseException:
            self._cancel_quietly(job["id"])
            raise
        self._cancel_quietly(job["id"])  # its result is ours now: nothing for the server to keep
        return Result(response.content, end, end["format"], tuple(end["input_size"]), tuple(end["output_size"]),
                      int(end["seed"]), float(end["seconds"] or 0.0), tuple(end.get("notes") or ()),
                      _attachment_name(response.headers.get("Content-Disposition", "")))

    # ------------------------------------------------------------------ the plumbing

    def _follow(self, job_id: str, on_progress: ProgressCallback | None,
                on_note: Callable[[str], None] | None) -> dict[str, Any]:
        """The job's JSON at its terminal event, the callbacks told along the way."""
        for name, data in self.events(job_id):
            if name == "progress" and on_progress is not None:
                on_progress(data["step"], data["steps"], data["tile"], data["tiles"])
            elif name == "note" and on_note is not None:
                on_note(data["message"])
            elif name in TERMINAL_EVENTS:
                return data
        raise ServerUnavailable(f"job {job_id}'s events ended without its end; check the server's log")

    def _cancel_quietly(self, job_id: str) -> None:
        """Best effort: a server that went away has nothing left to cancel."""
        try:
            self.session.delete(self.url + f"v1/jobs/{job_id}", timeout=(CONNECT_TIMEOUT, 10.0))
        except requests.RequestException:
            pass

    def _request(self, method: str, path: str, timeout: float | None = None, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, self.url + path,
                                            timeout=(CONNECT_TIMEOUT, timeout or self.timeout), **kwargs)
        except requests.exceptions.ConnectTimeout:
            raise ServerUnavailable(f"the dossr server at {self.url} did not accept a connection within "
                                    f"{CONNECT_TIMEOUT:g} s: check that it is running and --server is right") from None
        except requests.exceptions.ReadTimeout:
            raise ServerUnavailable(f"the dossr server at {self.url} did not answer within "
                                    f"{timeout or self.timeout:g} s; check its log, or try again") from None
        except requests.ConnectionError:
            raise ServerUnavailable(f"cannot reach the dossr server at {self.url}: start it with `dossr serve` "
                                    "or check --server") from None
        if response.status_code < 400:
            return response
        try:
            message = _error_text(response)
        finally:
            response.close()
        if response.status_code == 401:
            raise ServerUnavailable("the server wants a token: pass --token or set DOSSR_TOKEN" if not self.token
                                    else "the server refused the token: check --token or DOSSR_TOKEN")
        raise ServerError(response.status_code, message, _seconds(response.headers.get("Retry-After")))


def parse_sse(chunks: Iterable[bytes]) -> Iterator[tuple[int, str, str]]:
    """(id, event name, data) of each Server-Sent Event in a byte stream, by the HTML standard's rules.

    Lines end in CRLF, LF or CR (a CR at a chunk's end waits for the next chunk, so a CRLF split
    across chunks is one line end); a blank line ends an event; lines opening with ':' are
    comments (keep-alive pings); one space after a field's colon is dropped; data lines join with
    newlines; an event without data is not one. `id` is 0 when the event had none."""
    buffer, number, name, data = b"", 0, "", []
    for chunk in chunks:
        buffer += chunk
        while True:
            cut = min((i for i in (buffer.find(b"\r"), buffer.find(b"\n")) if i >= 0), default=-1)
            if cut < 0 or (buffer[cut:cut + 1] == b"\r" and cut == len(buffer) - 1):
                break  # no whole line yet (a lone CR at the end may be half of a CRLF)
            line = buffer[:cut].decode("utf-8", errors="replace")
            buffer = buffer[cut + (2 if buffer[cut:cut + 2] == b"\r\n" else 1):]
            if line == "":
                if data:
                    yield number, name or "message", "\n".join(data)
                name, data = "", []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            elif field == "event":
                name = value
            elif field == "id" and value.isdigit():
                number = int(value)
    # A stream that ends without the blank line after its last event drops that event (as browsers do).


def _files(data: bytes, filename: str | None) -> dict[str, tuple[str, bytes, str]]:
    return {"image": (filename or "image", data, "application/octet-stream")}


def _form(options: dict[str, Any]) -> dict[str, str]:
    """The options as form fields; an unknown name is refused here (the server would ignore it)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UsageError(f"unknown upscale option {unknown[0]!r}: the options are {', '.join(OPTIONS)}")
    return {name: str(value) for name, value in options.items() if value is not None}


def _error_text(response: requests.Response) -> str:
    """The server's one-line reason; a proxy's page or an empty body becomes the status line."""
    try:
        message = response.json().get("error")
    except (ValueError, AttributeError):
        message = None
    if isinstance(message, str) and message.strip():
        return _one_line(message)
    return f"the server answered {response.status_code} {response.reason or ''}".rstrip()


def _seconds(text: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not one our server sends)."""
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _attachment_name(disposition: str) -> str | None:
    marker = 'filename="'
    start = disposition.find(marker)
    return disposition[start + len(marker):].split('"', 1)[0] if start >= 0 else None


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


__all__ = ["Client", "Result", "ServerError", "ServerUnavailable", "parse_sse"]
