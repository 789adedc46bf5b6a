"""Load test for `dossr serve`: many concurrent clients on loopback, every request answered, nothing lost.

Starts a server on the tiny random model (or uses --url, which must be a loopback address), then
sends --requests requests from --clients threads, alternating the two ways in: POST /v1/upscale
(wait for the image) and POST /v1/jobs + its event stream + its result (then DELETE, as the
Python client does). It counts every HTTP status, checks that each job reached a terminal event
and that no answer was a 5xx, and reads the server's resident memory (VmRSS) after start, after
a warm-up and after the run, to show whether memory stays flat.

    python benchmarks/serve_load.py [--requests 200] [--clients 20] [--warmup 20] [--size 16] [--steps 1]
        [--url http://127.0.0.1:PORT/ --pid PID] [--json-out benchmarks/results/serve_load.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from dossr_cli.cli.serve import is_loopback
from tests.service.serving import start_server, stop_server, tiny_weights

TERMINAL = ("done", "failed", "cancelled")


def sample_png(side: int) -> bytes:
    """A deterministic smooth PNG."""
    import io

    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side].astype(np.float64) / max(side - 1, 1)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(12 * (x + y))], axis=-1)
    out = io.BytesIO()
    Image.fromarray((30 + 195 * rgb).astype(np.uint8), "RGB").save(out, "PNG")
    return out.getvalue()


def require_loopback(url: str) -> None:
    """The load test never leaves this machine."""
    if not is_loopback(urlsplit(url).hostname or ""):
        raise SystemExit(f"serve_load.py only loads a server on this machine (127.0.0.1, ::1, localhost); got {url}")


def rss_bytes(pid: int) -> int | None:
    """The process's resident memory, from /proc (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def one_request(session: requests.Session, url: str, index: int, image: bytes, fields: dict[str, str]) -> dict:
    """Request `index`: even ones wait on POST /v1/upscale, odd ones go through /v1/jobs. Every status is kept."""
    started = time.perf_counter()
    record: dict = {"kind": "upscale" if index % 2 == 0 else "jobs", "statuses": [], "terminal": None, "error": None}
    files = {"image": (f"load{index}.png", image, "image/png")}
    try:
        if record["kind"] == "upscale":
            answer = session.post(url + "v1/upscale", files=files, data=fields, timeout=(10, 900))
            record["statuses"].append(answer.status_code)
            if answer.status_code == 200:
                record["terminal"] = "done" if answer.headers.get("X-Dossr-Job") else None
                record["server_seconds"] = float(answer.headers.get("X-Dossr-Seconds", "nan"))
        else:
            answer = session.post(url + "v1/jobs", files=files, data=fields, timeout=(10, 120))
            record["statuses"].append(answer.status_code)
            if answer.status_code == 202:
                job_id = answer.json()["id"]
                record["terminal"] = follow(session, url, job_id, record)
                if record["terminal"] == "done":
                    result = session.get(url + f"v1/jobs/{job_id}/result", timeout=(10, 120))
                    record["statuses"].append(result.status_code)
                record["statuses"].append(session.delete(url + f"v1/jobs/{job_id}", timeout=(10, 60)).status_code)
    except requests.RequestException as error:
        record["error"] = f"{type(error).__name__}: {error}"
    record["seconds"] = time.perf_counter() - started
    return record


def follow(session: requests.Session, url: str, job_id: str, record: dict) -> str | None:
    """The job's terminal event name from its SSE stream (None if the stream ended without one)."""
    with session.get(url + f"v1/jobs/{job_id}/events", stream=True, timeout=(10, 120)) as stream:
        record["statuses"].append(stream.status_code)
        if stream.status_code != 200:
            return None
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event:") and line[6:].strip() in TERMINAL:
                return line[6:].strip()
    return None


def run_load(url: str, total: int, clients: int, image: bytes, fields: dict[str, str], offset: int = 0) -> dict:
    """`total` requests from `clients` threads; the counts that say whether anything was lost."""
    local = threading.local()

    def send(index: int) -> dict:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return one_request(local.session, url, index, image, fields)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        records = list(pool.map(send, range(offset, offset + total)))
    wall = time.perf_counter() - started
    statuses = Counter(status for record in records for status in record["statuses"])
    terminal = Counter(record["terminal"] for record in records if record["statuses"] and
                       record["statuses"][0] in (200, 202))
    accepted = sum(1 for record in records if record["statuses"] and record["statuses"][0] in (200, 202))
    latencies = sorted(record["seconds"] for record in records if record["terminal"] == "done")
    return {
        "requests": total, "clients": clients, "wall_seconds": round(wall, 2),
        "answered": sum(1 for record in records if record["statuses"] and record["error"] is None),
        "accepted": accepted, "refused_429": sum(1 for r in records if r["statuses"][:1] == [429]),
        "errors": [record["error"] for record in records if record["error"]],
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
        "server_errors": sum(count for code, count in statuses.items() if code >= 500),
        "terminal": {str(name): count for name, count in terminal.items()},
        "lost": accepted - sum(count for name, count in terminal.items() if name in TERMINAL),
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_max_s": round(latencies[-1], 3) if latencies else None,
        "by_kind": dict(Counter(record["kind"] for record in records)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20, help="Requests sent (and counted apart) before the run.")
    parser.add_argument("--size", type=int, default=16, help="Side of the square test image.")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--url", default=None, help="A running server on loopback (default: start one).")
    parser.add_argument("--pid", type=int, default=None, help="With --url: the server's pid, for its memory.")
    parser.add_argument("--json-out", type=Path, default=REPO / "benchmarks/results/serve_load.json")
    args = parser.parse_args()
    for name, value in (("--requests", args.requests), ("--clients", args.clients), ("--size", args.size)):
        if not 1 <= value <= 10_000:
            raise SystemExit(f"{name} must be in 1..10000; got {value}")
    workdir = Path(tempfile.mkdtemp(prefix="dossr-load-"))
    server = None
    if args.url is None:
        server = start_server(tiny_weights(workdir), workdir)  # not --quiet: its ready line gives the port
        url, pid = server.url, server.process.pid
    else:
        require_loopback(args.url)
        url, pid = args.url.rstrip("/") + "/", args.pid
    try:
        fields = {"steps": str(args.steps), "t1": "500"}
        image = sample_png(args.size)
        memory = {"start": rss_bytes(pid) if pid else None}
        warmup = run_load(url, args.warmup, args.clients, image, fields) if args.warmup else None
        memory["after_warmup"] = rss_bytes(pid) if pid else None
        run = run_load(url, args.requests, args.clients, image, fields, offset=args.warmup)
        memory["after_run"] = rss_bytes(pid) if pid else None
        health = requests.get(url + "v1/health", timeout=10).json()
    finally:
        if server is not None:
            stop_server(server.process)
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {"size": args.size, "steps": args.steps, "warmup": warmup, "run": run, "rss_bytes": memory,
               "health_after": health, "load_average": _load_average()}
    mib = {key: (f"{value / (1 << 20):.0f} MiB" if value else "?") for key, value in memory.items()}
    rows = [("requests / clients", f"{run['requests']} / {run['clients']}"), ("wall", f"{run['wall_seconds']} s"),
            ("answered", run["answered"]), ("statuses", run["statuses"]), ("5xx", run["server_errors"]),
            ("jobs terminal", run["terminal"]), ("lost", run["lost"]), ("p50 / max latency",
            f"{run['latency_p50_s']} s / {run['latency_max_s']} s"), ("RSS start", mib["start"]),
            ("RSS after warm-up", mib["after_warmup"]), ("RSS after run", mib["after_run"]),
            ("health after", health)]
    for name, value in rows:
        print(f"| {name:<20} | {value} |")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    bad = run["server_errors"] or run["lost"] or run["errors"] or run["answered"] != run["requests"]
    sys.exit(1 if bad else 0)


def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
