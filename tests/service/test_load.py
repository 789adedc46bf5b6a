"""A bounded load on a real `dossr serve` (loopback, tiny model): every request answered, none lost, no 5xx.

The smaller sibling of benchmarks/serve_load.py (200 requests from 20 clients, figures in README),
with the same request mix: waiting POST /v1/upscale calls and /v1/jobs followed by events and result.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from serve_load import require_loopback, rss_bytes, run_load, sample_png  # benchmarks/ is not a package


def test_forty_requests_from_eight_clients_are_all_answered(server):
    before = rss_bytes(server.process.pid)
    load = run_load(server.url, 40, 8, sample_png(16), {"steps": "1"})
    health = server_health(server.url)
    assert load["errors"] == [] and load["answered"] == 40
    assert load["server_errors"] == 0 and all(int(code) < 500 for code in load["statuses"])
    assert load["lost"] == 0 and load["terminal"] == {"done": load["accepted"]} and load["accepted"] == 40
    assert load["by_kind"] == {"upscale": 20, "jobs": 20}
    assert health == {"status": "ok", "queued": 0, "running": 0}  # nothing left behind on the server
    assert before is not None and before > 0


def server_health(url: str) -> dict:
    import requests

    return requests.get(url + "v1/health", timeout=10).json()


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000/", "http://example.com/", "http://0.0.0.0:8000/"])
def test_the_load_script_refuses_a_server_off_this_machine(url):
    with pytest.raises(SystemExit, match="only loads a server on this machine"):
        require_loopback(url)
    require_loopback("http://127.0.0.1:8000/")
    require_loopback("http://[::1]:8000/")
