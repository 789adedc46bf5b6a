"""`dossr batch --engine ray`: a real local Ray runtime, started once for the module, and the tiny weights.

Ray starts slowly, so one runtime serves every test that needs it; the command runs in this
process and finds it already initialised. Its 4 logical CPUs hold two CPU actors, each with
torch's 2 threads of this process (tests/conftest.py), the same as the local engine's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dossr_cli.batch.journal import JOURNAL_NAME

from .helpers import (
    batch_summary,
    decode,
    default_sigint,
    dossr_command,
    files_in,
    run_in_process,
    save,
    smooth_image,
    subprocess_env,
)

SIZES = {"a": (64, 64), "b": (48, 80), "c": (16, 24)}  # 64 x 64 is large enough for thread counts to show
# --tile-size auto tiles by the image's size, but would shrink its tiles where the free memory (which
# changes from moment to moment) is short: a fixed budget takes that out of the comparison of engines.
SAME_TILES = ("--max-memory", "8GB")
LOST_LOADING = "a Ray worker was lost while loading the weights; starting another"  # the note


@pytest.fixture(scope="module")
def ray_runtime(tmp_path_factory):
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as patch:  # the workers inherit this environment when Ray starts
        patch.setenv("DOSSR_CACHE_DIR", str(tmp_path_factory.mktemp("ray-worker-cache")))
        patch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        patch.delenv("RAY_ADDRESS", raising=False)
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray") / "in"
    for key, (height, width) in SIZES.items():
        save(smooth_image(height, width, key), root / f"{key}.png")
    return root


@pytest.fixture(scope="module")
def ray_run(ray_runtime, images, tiny_weights, verified_cache):
    """One finished Ray batch over `images` (2 steps), and its result."""
    out = images.parent / "ray_out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOSSR_CACHE_DIR", verified_cache)
        result = run_in_process(["batch", images, "-o", out, "--engine", "ray", "--weights", tiny_weights,
                                 "--steps", 2, "--json", *SAME_TILES])
    assert result.code == 0, result.stderr
    return out, result


def outputs(folder: Path) -> set[str]:
    return {name for name in files_in(folder) if not name.startswith(".dossr-journal")}


def pixel_difference(a: bytes, b: bytes) -> int:
    return int(np.abs(np.asarray(decode(a), dtype=int) - np.asarray(decode(b), dtype=int)).max())


def journal_rows(folder: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(folder / JOURNAL_NAME)) as db:
        return dict(db.execute("SELECT input, status FROM jobs").fetchall())


def records(stdout: bytes, out: Path) -> list[tuple[str, str, str]]:
    """The --json lines, sorted, with the output folder's name left out."""
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    return sorted((r["input"], r["status"], r["output"].removeprefix(str(out))) for r in lines)


def test_same_bytes_and_reports_as_the_local_engine(dossr, ray_run, images, tmp_path):
    ray_out, ray_result = ray_run
    local = dossr("batch", images, "-o", tmp_path / "local", "--batch-size", 1, "--steps", 2, "--json", *SAME_TILES)
    assert local.code == 0, local.stderr
    assert outputs(ray_out) == outputs(tmp_path / "local") == {f"{key}_x4.png" for key in SIZES}
    for name in sorted(outputs(ray_out)):
        remote, here = (ray_out / name).read_bytes(), (tmp_path / "local" / name).read_bytes()
        assert remote == here, f"{name}: pixels differ by up to {pixel_difference(remote, here)}"
    assert records(ray_result.stdout, ray_out) == records(local.stdout, tmp_path / "local")
    assert batch_summary(ray_result.stderr) == batch_summary(local.stderr) == {"done": 3, "skipped": 0, "failed": 0}
    assert journal_rows(ray_out) == {f"{key}.png": "done" for key in SIZES}


def test_a_rerun_does_no_work(dossr, ray_run, images, monkeypatch):
    ray_out, _ = ray_run
    before = {name: (ray_out / name).stat().st_mtime_ns for name in outputs(ray_out)}
    import ray

    monkeypatch.setattr(ray, "remote", lambda *args, **kwargs: pytest.fail("a re-run with nothing to do made actors"))
    again = dossr("batch", images, "-o", ray_out, "--engine", "ray", "--steps", 2, "--json", *SAME_TILES)
    assert again.code == 0, again.stderr
    assert {json.loads(line)["status"] for line in again.stdout.decode().splitlines()} == {"skipped"}
    assert batch_summary(again.stderr) == {"done": 0, "skipped": 3, "failed": 0}
    assert {name: (ray_out / name).stat().st_mtime_ns for name in outputs(ray_out)} == before


def upscaler_pids(title: str) -> list[int]:
    """Processes whose title Ray set to `title` (an actor shows ray::Class.method while it runs one)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(title.encode()):
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actor's process through /proc")
def test_a_worker_killed_mid_run_loses_no_image(dossr, ray_runtime, tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    names = [f"i{n}" for n in range(4)]
    for name in names:
        save(smooth_image(64, 64, name), root / f"{name}.png")
    killed = []

    def kill_a_busy_worker() -> None:  # once the first image is out, the actors are loaded and working
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            busy = upscaler_pids("ray::Upscaler.run") if any(out.glob("*.png")) else []
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    result = dossr("batch", root, "-o", out, "--engine", "ray", "--json")
    killer.join()
    assert killed and result.code == 0, result.stderr
    assert "a Ray worker died while upscaling" in result.stderr
    assert [json.loads(line)["status"] for line in result.stdout.decode().splitlines()] == ["done"] * 4
    assert outputs(out) - {name for name in outputs(out) if name.startswith(".")} == {f"{n}_x4.png" for n in names}
    # a process killed while writing leaves its hidden temporary, never a partial output
    assert all(name.startswith(".") and "_x4.png" in name for name in outputs(out) if name.startswith("."))
    for name in names:
        assert decode(out / f"{name}_x4.png").size == (256, 256)
    assert journal_rows(out) == {f"{n}.png": "done" for n in names}


def descendants(pid: int) -> set[int]:
    """Every process under `pid`: a local Ray's head processes and their workers."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actor's process through /proc")
def test_a_worker_lost_while_loading_the_weights_is_replaced(dossr, ray_runtime, tmp_path):
    """A worker can be lost before its first image too (its node gone, its process killed): another takes
    its place and the batch goes on, where a load that fails for a reason stops it (the test below)."""
    root, out = tmp_path / "in", tmp_path / "out"
    names = [f"w{n}" for n in range(3)]
    for name in names:
        save(smooth_image(32, 32, name), root / f"{name}.png")
    killed = []

    def kill_a_loading_worker() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            if loading := upscaler_pids("ray::Upscaler.__init__"):
                os.kill(loading[0], signal.SIGKILL)
                killed.append(loading[0])
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_loading_worker, daemon=True)
    killer.start()
    result = dossr("batch", root, "-o", out, "--engine", "ray", "--json")
    killer.join()
    assert killed and result.code == 0, result.stderr
    assert LOST_LOADING in result.stderr
    assert sorted(json.loads(line)["input"] for line in result.stdout.decode().splitlines()) == [
        str(root / f"{name}.png") for name in names]
    assert outputs(out) == {f"{name}_x4.png" for name in names}
    assert journal_rows(out) == {f"{name}.png": "done" for name in names}



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actor's process through /proc")
def test_workers_that_never_finish_loading_stop_the_run_instead_of_looping(dossr, ray_runtime, tmp_path):
    from dossr_cli.batch.ray_engine import ATTEMPTS

    save(smooth_image(16, 16, "n"), tmp_path / "in" / "n.png")
    finished, killed = threading.Event(), set()

    def kill_every_loading_worker() -> None:
        while not finished.wait(0.01):
            for pid in set(upscaler_pids("ray::Upscaler.__init__")) - killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)

    killer = threading.Thread(target=kill_every_loading_worker, daemon=True)
    killer.start()
    try:
        result = dossr("batch", tmp_path / "in", "-o", tmp_path / "out", "--engine", "ray")
    finally:
        finished.set()
        killer.join()
    assert result.code == 1 and len(killed) == ATTEMPTS + 1, result.stderr  # one actor for one image
    assert len(result.error_lines) == 1 and result.error_lines[0].startswith(
        f"dossr: error: a Ray worker could not start: {ATTEMPTS + 1} were lost while loading the weights (last: ")
    assert result.stderr.count("a Ray worker was lost while loading the weights; starting another") == ATTEMPTS
    assert outputs(tmp_path / "out") == set()

THREADS = 2  # the driver's torch threads, so each CPU actor holds 2 CPUs: one per worker node below
LOST_NODE_IMAGES = [f"i{n}" for n in range(9)]


@pytest.fixture
def two_node_cluster(monkeypatch):
    """A Ray cluster of three raylets on this machine: a head without CPUs, which the driver joins, and
    two worker nodes of THREADS CPUs, so each worker node holds exactly one actor. The failure detector
    declares a silent node dead after about 5 s (Ray's default, about 15 s, only makes the test wait)."""
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # the nodes' workers inherit this environment
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    detector = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 5}
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": detector})
    try:
        yield cluster, [cluster.add_node(num_cpus=THREADS) for _ in range(2)]
    finally:
        cluster.shutdown()


def done_so_far(out: Path) -> list[str]:
    """The journal's done rows, read without creating or locking anything."""
    with contextlib.suppress(sqlite3.Error):
        uri = f"{(out / JOURNAL_NAME).as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            return [row[0] for row in db.execute("SELECT input FROM jobs WHERE status = 'done'")]
    return []


def wait_until_dead(address: str, node_id: str, timeout: float = 60) -> None:
    """Until the cluster's failure detector has declared the node dead (GcsNodeInfo.state DEAD is 1)."""
    from ray._raylet import GcsClient

    client, deadline = GcsClient(address=address), time.monotonic() + timeout
    while {key.hex(): info.state for key, info in client.get_all_node_info().items()}.get(node_id) != 1:
        assert time.monotonic() < deadline, "the cluster never noticed that the node was gone"
        time.sleep(0.1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds each node's processes through /proc")
def test_a_node_lost_mid_run_loses_no_image(dossr, two_node_cluster, tiny_weights, tmp_path):
    """`dossr batch --address` on a real multi-node cluster; once an image is done, the worker node whose
    actor is upscaling one is killed outright (raylet, object store, its workers: a machine gone).

    The other node's actor is held still until the cluster has declared the node dead, so the batch
    outlasts the failure detector, as any long batch does: the replacement actor, placed on the lost
    node before its loss was known, dies there while loading, which once ended the run with exit 1.
    """
    from ray._private import ray_constants

    cluster, worker_nodes = two_node_cluster
    root, out = tmp_path / "in", tmp_path / "out"
    for name in LOST_NODE_IMAGES:  # the first one small, so one is done while the other actor is busy
        save(smooth_image(*((16, 16) if name == "i0" else (64, 64)), name), root / f"{name}.png")
    command = dossr_command("batch", root, "-o", out, "--engine", "ray", "--address", cluster.address,
                            "--weights", tiny_weights, "--steps", 1, "--json", *SAME_TILES)
    env = {**subprocess_env(), "OMP_NUM_THREADS": str(THREADS)}
    with open(tmp_path / "stdout", "wb") as stdout, open(tmp_path / "stderr", "wb") as stderr:
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
    try:
        victim, busy, survivors = None, set(), set()
        deadline = time.monotonic() + 180
        while not busy and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            if done_so_far(out):
                upscaling = set(upscaler_pids("ray::Upscaler.run"))
                for node in worker_nodes:
                    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
                    if busy := upscaling & descendants(raylet):
                        victim = node
                        break
        assert victim is not None, f"no actor was upscaling on a worker node: {(tmp_path / 'stderr').read_text()}"
        survivors = {pid for node in worker_nodes if node is not victim for pid in set(upscaler_pids("ray::Upscaler"))
                     & descendants(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)}
        for pid in survivors:  # held still, as a long batch would be, until the cluster has noticed the loss
            os.kill(pid, signal.SIGSTOP)
        cluster.remove_node(victim, allow_graceful=False)  # SIGKILL; it checks that none of the node's services is left
        deadline = time.monotonic() + 30
        while any(map(alive, busy)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(alive, busy)), "the lost node's actor is still running"
        wait_until_dead(cluster.address, victim.node_id)
        deadline = time.monotonic() + 10  # the replacement, sent to the dead node before it was known dead
        while child.poll() is None and LOST_LOADING not in (tmp_path / "stderr").read_text() and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in survivors:
            os.kill(pid, signal.SIGCONT)
        child.wait(timeout=300)
    finally:
        for pid in survivors:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        child.kill()
    stderr = (tmp_path / "stderr").read_text()
    assert child.returncode == 0, stderr
    assert "Traceback" not in stderr
    retried = re.findall(r"a Ray worker died while upscaling (\S+); running it again", stderr)
    assert retried, stderr  # the image the lost node was upscaling went to the other one
    lines = [json.loads(line) for line in (tmp_path / "stdout").read_text().splitlines()]
    assert sorted((line["input"], line["status"]) for line in lines) == [
        (str(root / f"{name}.png"), "done") for name in LOST_NODE_IMAGES]  # each once
    assert outputs(out) == {f"{name}_x4.png" for name in LOST_NODE_IMAGES}  # no copy, no temporary left
    for name in LOST_NODE_IMAGES:
        assert decode(out / f"{name}_x4.png").size == tuple(4 * side for side in decode(root / f"{name}.png").size)
    assert journal_rows(out) == {f"{name}.png": "done" for name in LOST_NODE_IMAGES}
    assert batch_summary(stderr) == {"done": len(LOST_NODE_IMAGES), "skipped": 0, "failed": 0}
    (tmp_path / "again").mkdir()
    for name in set(retried):  # what the other node wrote for the lost one is what a local run writes
        shutil.copy(root / name, tmp_path / "again" / name)
    local = dossr("batch", tmp_path / "again", "-o", tmp_path / "local", "--batch-size", 1, *SAME_TILES)
    assert local.code == 0, local.stderr
    for name in set(retried):
        output = Path(name).stem + "_x4.png"
        assert (out / output).read_bytes() == (tmp_path / "local" / output).read_bytes(), output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="follows the child's processes through /proc")
def test_ctrl_c_ends_with_130_and_stops_the_ray_it_started(ray_runtime, tiny_weights, tmp_path):
    """A real subprocess, which starts a Ray of its own: after the interrupt none of its processes is left."""
    for n in range(8):
        save(smooth_image(64, 64, f"k{n}"), tmp_path / "in" / f"k{n}.png")
    child = subprocess.Popen(dossr_command("batch", tmp_path / "in", "-o", tmp_path / "out", "--engine", "ray",
                                           "--weights", tiny_weights, "--steps", 1, "--json"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(),
                             preexec_fn=default_sigint)  # noqa: PLW1509 - only signal.signal
    try:
        assert select.select([child.stdout], [], [], 120)[0] and child.stdout.readline()  # Ray is up and working
        ray_processes = descendants(child.pid)
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, stderr.decode()
    assert "dossr: interrupted" in stderr.decode() and "Traceback" not in stderr.decode()
    assert ray_processes
    deadline = time.monotonic() + 15
    while any(map(alive, ray_processes)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(alive, ray_processes)), "the interrupted run left Ray processes behind"


def test_without_ray_a_one_line_usage_error(dossr, images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    result = dossr("batch", images, "-o", tmp_path / "out", "--engine", "ray")
    assert result.code == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == ["dossr: error: --engine ray needs Ray: pip install 'dossr[ray]'"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("options", "message"), [
    (["--address", "auto"], "--address needs --engine ray"),
    (["--workers", "2"], "--workers needs --engine ray"),
    (["--engine", "local", "--gpus-per-worker", "1"], "--gpus-per-worker needs --engine ray"),
])
def test_ray_options_need_the_ray_engine(dossr, images, tmp_path, options, message):
    result = dossr("batch", images, "-o", tmp_path / "out", *options)
    assert result.code == 2 and result.error_lines == [f"dossr: error: {message}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("options", "message"), [
    (["--workers", "0"], "--workers must be a positive number; got 0"),
    (["--gpus-per-worker", "-1"], "--gpus-per-worker must be 0 (CPU workers) or a positive number; got -1.0"),
])
def test_bad_ray_options(dossr, images, tmp_path, options, message):
    pytest.importorskip("ray")
    result = dossr("batch", images, "-o", tmp_path / "out", "--engine", "ray", *options)
    assert result.code == 2 and len(result.error_lines) == 1 and result.error_lines[0].startswith(
        f"dossr: error: {message}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("options", "message"), [
    (["--workers", "3"], ("--workers 3 with 2 CPUs per worker (torch's threads here) needs more than the Ray "
                          "cluster has (4 CPUs)")),
    (["--gpus-per-worker", "1"], "--gpus-per-worker 1 needs more than the Ray cluster has (0 GPUs)"),
])
def test_more_workers_than_the_cluster_holds(dossr, ray_runtime, images, tmp_path, options, message):
    result = dossr("batch", images, "-o", tmp_path / "out", "--engine", "ray", *options)
    assert result.code == 2 and result.error_lines == [f"dossr: error: {message}"]


def test_weights_a_worker_cannot_load_stop_the_run_with_its_error(ray_runtime, images, tmp_path):
    """The bundle must be on storage every node shares; a worker that cannot find it says so."""
    from dossr_cli.batch.journal import Journal
    from dossr_cli.batch.params import UpscaleParams
    from dossr_cli.batch.ray_engine import run_ray
    from dossr_cli.batch.runner import BatchItem
    from dossr_cli.errors import DossrError

    item = BatchItem(images / "a.png", "a.png", tmp_path / "out" / "a_x4.png", None, "0" * 64)
    journal = Journal(tmp_path / "out")
    try:
        with pytest.raises(DossrError, match="no such file or folder"):
            run_ray(tmp_path / "not-shared", "auto", "auto", [item], UpscaleParams(steps=1), "m", journal, False)
    finally:
        journal.close()
    assert not (tmp_path / "out" / "a_x4.png").exists()


def test_an_image_whose_worker_keeps_dying_fails_after_a_few_attempts():
    from collections import deque

    from dossr_cli.batch.ray_engine import ATTEMPTS, _Attempt, _lost
    from dossr_cli.batch.runner import BatchItem

    item = BatchItem(Path("in/a.png"), "a.png", Path("out/a_x4.png"), None, "0" * 64)
    retries, notes = deque(), []
    attempt = _Attempt(item, may_replace=False, existed=False)
    while (outcome := _lost(attempt, RuntimeError("killed\nmore"), retries, notes.append)) is None:
        attempt = retries.popleft()
        assert attempt.may_replace  # the name was free when it first left: what a lost attempt wrote is ours
    assert attempt.number == ATTEMPTS and len(notes) == ATTEMPTS - 1
    assert outcome.status == "failed" and outcome.detail == f"its Ray worker died {ATTEMPTS} times (last: killed)"


@pytest.mark.parametrize(("resources", "workers", "gpus_per_worker", "expected"), [
    ({"CPU": 64.0, "GPU": 8.0}, None, None, (8, 1.0)),  # one actor per GPU
    ({"CPU": 64.0, "GPU": 8.0}, None, 0.5, (16, 0.5)),
    ({"CPU": 64.0, "GPU": 8.0}, None, 0.0, (16, 0.0)),  # CPU actors, 4 threads each
    ({"CPU": 16.0}, 2, None, (2, 0.0)),
    ({"CPU": 64.0, "GPU": 8.0}, 3, None, (3, 1.0)),
])
def test_how_many_actors(resources, workers, gpus_per_worker, expected):
    from dossr_cli.batch.ray_engine import _size

    assert _size(resources, workers, gpus_per_worker, threads=4, items=100) == expected
    assert _size(resources, workers, gpus_per_worker, threads=4, items=2)[0] == 2  # never more actors than images


@pytest.mark.parametrize(("batch_size", "gpus", "device", "expected"), [
    (0, 1.0, "auto", 4), (0, 0.5, "cuda", 4), (0, 0.0, "cpu", 1), (0, 1.0, "cpu", 1), (3, 0.0, "cpu", 3),
    (2, 1.0, "auto", 2)])
def test_images_an_actor_takes_at_a_time(batch_size, gpus, device, expected):
    from dossr_cli.batch.ray_engine import actor_batch

    assert actor_batch(batch_size, gpus, device) == expected


def test_an_actor_takes_a_batch_and_writes_the_local_engines_bytes(ray_runtime, tiny_weights, verified_cache,
                                                                   tmp_path, monkeypatch):
    """--batch-size 2, one actor, three images of one size: two leave together (both started before
    either is done), then the third; the files are byte for byte those of run_local's batches of 2."""
    from dossr_cli.batch.journal import Journal
    from dossr_cli.batch.params import UpscaleParams
    from dossr_cli.batch.ray_engine import run_ray
    from dossr_cli.batch.runner import list_inputs, plan, run_local
    from dossr_cli.pipeline import DoSSRPipeline

    monkeypatch.setenv("DOSSR_CACHE_DIR", verified_cache)
    folder = tmp_path / "same"
    for key in "pqr":
        save(smooth_image(16, 24, key), folder / f"{key}.png")
    params = UpscaleParams(steps=1, max_memory=8 << 30)
    events: list[tuple[str, str]] = []

    def engine_run(name: str, run) -> Path:
        out = tmp_path / name
        journal = Journal(out)
        try:
            items, known = plan(folder, out, list_inputs(folder, False), params, "m", "_x4", None, journal)
            assert len(items) == 3 and known == []
            outcomes = run(items, journal)
        finally:
            journal.close()
        assert [o.status for o in outcomes] == ["done"] * 3
        return out

    ray_out = engine_run("ray", lambda items, journal: run_ray(
        Path(tiny_weights), "cpu", "auto", items, params, "m", journal, False, workers=1, batch_size=2,
        on_start=lambda item: events.append(("start", item.rel)),
        on_outcome=lambda outcome: events.append(("done", outcome.rel))))
    assert events == [("start", "p.png"), ("start", "q.png"), ("done", "p.png"), ("done", "q.png"),
                      ("start", "r.png"), ("done", "r.png")]
    pipe = DoSSRPipeline.from_pretrained(tiny_weights, device="cpu")
    local_out = engine_run("local", lambda items, journal: run_local(pipe, items, params, "m", journal, False, 2))
    for key in "pqr":
        remote, here = (ray_out / f"{key}_x4.png").read_bytes(), (local_out / f"{key}_x4.png").read_bytes()
        assert remote == here, f"{key}: pixels differ by up to {pixel_difference(remote, here)}"
