"""A real `dossr serve` process on 127.0.0.1 for the service tests, and small helpers to call it."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

READY = re.compile(r"serving on (http://[^ ]+/)")
REPO = Path(__file__).resolve().parents[2]


PR_SET_PDEATHSIG = 1  # linux/prctl.h
_prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None  # looked up before any fork


def die_with_parent() -> None:
    """For Popen's preexec_fn: the kernel sends the child SIGTERM when the test process dies, even by SIGKILL
    (a timed-out CI job), so no server is left holding its port and model after the tests are gone.
    One system call after fork, no import and no lock: safe beside the test process's threads."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Server:
    url: str  # ends with /
    process: subprocess.Popen
    log: Path  # the server's stderr
    weights: str
    token: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def get(self, path: str, headers: dict[str, str] | None = None, **options: object) -> requests.Response:
        return requests.get(self.url + path.lstrip("/"), headers={**self.headers, **(headers or {})}, timeout=60,
                            **options)

    def post(self, path: str, image: bytes | None = None, filename: str = "in.png", **fields: object
             ) -> requests.Response:
        files = {"image": (filename, image, "application/octet-stream")} if image is not None else None
        return requests.post(self.url + path.lstrip("/"), headers=self.headers, files=files,
                             data={k: str(v) for k, v in fields.items()}, timeout=120)

    def delete(self, path: str) -> requests.Response:
        return requests.delete(self.url + path.lstrip("/"), headers=self.headers, timeout=60)

    def stderr(self) -> str:
        return self.log.read_text()


def tiny_weights(folder: Path) -> str:
    """The tiny random bundle (seed 0: the command-line tests' tiny_weights, byte for byte)."""
    from dossr_cli.checkpoint.bundle import save_bundle
    from dossr_cli.random_weights import random_networks

    return str(save_bundle(random_networks(seed=0), folder / "tiny"))


def start_server(weights: str, folder: Path, *args: str, token: str | None = None, timeout: float = 90,
                 env: dict[str, str] | None = None, wait: bool = True) -> Server:
    """`dossr serve --port 0 ARGS` (the kernel picks a free port), once it says it is serving (at once with
    wait=False: then call wait_until_serving, so that several servers load their models side by side)."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"server-{time.monotonic_ns()}.log"
    env = {**{k: v for k, v in os.environ.items() if k not in ("DOSSR_TOKEN", "DOSSR_SERVER", "DOSSR_WEIGHTS")},
           **(env or {})}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), *sys.path]), PYTHONUNBUFFERED="1",
               DOSSR_CACHE_DIR=str(folder / "cache"))
    if token is not None:
        env["DOSSR_TOKEN"] = token
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "dossr_cli", "serve", "--weights", weights, "--port", "0",
                                    *args], stdout=subprocess.DEVNULL, stderr=sink, env=env,
                                   start_new_session=True, preexec_fn=die_with_parent)  # noqa: PLW1509
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    server = Server("", process, log, weights, token, headers)
    return wait_until_serving(server, timeout) if wait else server


def wait_until_serving(server: Server, timeout: float = 90) -> Server:
    """Until the server's ready line (printed once its port is bound) gives its address."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = READY.search(server.log.read_text())
        if found:
            server.url = found.group(1).replace("//0.0.0.0:", "//127.0.0.1:")
            return server
        if server.process.poll() is not None:
            raise AssertionError(f"dossr serve exited {server.process.returncode}: {server.log.read_text()}")
        time.sleep(0.1)
    stop_server(server.process)
    raise AssertionError(f"dossr serve did not start in {timeout} s: {server.log.read_text()}")


def stop_server(process: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM, as a service manager stops it; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def sse_events(response: requests.Response) -> list[tuple[int, str, dict]]:
    """(id, name, data) of each event of a streamed text/event-stream response, to its end."""
    import json

    events, number, name, data = [], 0, "message", []
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if data:
                events.append((number, name, json.loads("\n".join(data))))
            name, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "id":
                number = int(value)
            elif key == "event":
                name = value
            elif key == "data":
                data.append(value)
    return events
