"""`dossr serve`: load the model once, then answer the HTTP API and the web page (uvicorn).

Binds to loopback unless told otherwise, and then only with a token. Ctrl-C or SIGTERM:
no new jobs, the queued ones cancelled, the running batch finished (or stopped after
--shutdown-grace seconds), then exit 0.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
from typing import Annotated, Any

import typer

from dossr_cli import __version__
from dossr_cli.cli import common
from dossr_cli.cli.console import say
from dossr_cli.errors import DossrError, UsageError

LOOPBACK_NAMES = ("localhost",)
TOKEN_ENV = "DOSSR_TOKEN"
STEP_ALLOWANCE = 30  # seconds past the grace for the stopped batch's last step, before connections are cut
CPU_BATCH, GPU_BATCH = 1, 4  # --batch-size auto: as the local batch engine (a CPU gains nothing from batches)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """A port in use is a one-line error before seven gigabytes are loaded, not a traceback after."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as failure:
            raise DossrError(f"cannot listen on {host}:{port} ({failure.strerror}); pick another --port or stop "
                             "what holds it") from None


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; anything but loopback needs a token.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    token: Annotated[str | None, typer.Option("--token", help=f"Every API request must send 'Authorization: Bearer "
                                              f"TOKEN' (default: ${TOKEN_ENV}).", show_default=False)] = None,
    weights: common.Weights = None,
    download: common.Download = False,
    device: common.Device = "auto",
    dtype: common.Dtype = "auto",
    compile: common.Compile = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Requests of one size and options run together, "
                                            "up to this many (0: auto, 4 on a GPU, 1 on a CPU).")] = 0,
    max_upload: Annotated[str, typer.Option("--max-upload", help="Largest upload, e.g. 64MB.")] = "64MB",
    max_pixels: common.MaxPixels = None,
    max_output_pixels: common.MaxOutputPixels = None,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Jobs waiting or running before new ones get 429.")]
    = 32,
    request_timeout: Annotated[float, typer.Option("--request-timeout", help="Seconds a job may take from its "
                                                   "arrival before it fails as timed out.")] = 600.0,
    result_ttl: Annotated[float, typer.Option("--result-ttl", help="Seconds a finished job's result is kept for "
                                              "GET /v1/jobs/ID/result.")] = 600.0,
    shutdown_grace: Annotated[float, typer.Option("--shutdown-grace", help="On Ctrl-C or SIGTERM, seconds the "
                                                  "running batch may take to finish before it is stopped.")] = 30.0,
    quiet: common.Quiet = False,
    debug: common.Debug = False,
) -> None:
    """Serve the HTTP API (docs at /docs) and the web page (/) from one warm model.

    Exit codes: 0 stopped cleanly, 1 failed to start, 2 usage error.
    """
    try:
        import fastapi  # noqa: F401
        import fastapi_offline  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise DossrError("dossr serve needs its extra: pip install 'dossr[serve]'") from None
    from dossr_cli.service.options import Limits

    token = token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(host) and not token:
        raise UsageError(f"--host {host} listens beyond this machine: give a --token (or set {TOKEN_ENV}), which "
                         "every request must then send")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in 0..65535; got {port}")
    for name, value in (("--batch-size", batch_size), ("--max-queue", max_queue - 1)):
        if value < 0:
            raise UsageError(f"{name} must be at least {0 if name == '--batch-size' else 1}; got {value}")
    for name, seconds in (("--request-timeout", request_timeout), ("--result-ttl", result_ttl),
                          ("--shutdown-grace", shutdown_grace)):
        if not seconds > 0:
            raise UsageError(f"{name} must be a positive number of seconds; got {seconds}")
    upload = common.parse_memory(max_upload, "--max-upload")
    defaults = Limits()
    limits = Limits(upload, max_pixels or defaults.max_pixels, max_output_pixels or defaults.max_output_pixels,
                    max_queue, request_timeout)
    common.check_device_dtype(device, dtype)
    check_port_free(host, port)

    bundle = common.find_weights(weights, download, quiet)
    pipe = common.load_pipeline(bundle, device, dtype, compile)
    auto_batch = CPU_BATCH if pipe.device.type in ("cpu", "mps") else GPU_BATCH
    model = {"version": __version__, "weights": common.weights_identity(bundle), "name": bundle.name,
             "device": str(pipe.device), "dtype": _dtype_name(pipe.dtype), "upscale": pipe.config.upscale}
    warm_up(pipe)
    run_server(pipe, limits, model, token, host, port, batch_size or auto_batch, result_ttl, shutdown_grace, quiet,
               debug)


def warm_up(pipe: Any) -> None:
    """One small image through the whole job before the port opens: the first request then pays no one-off
    set-up (the CPU's kernel choices, CUDA's context and handles), and a model that cannot run fails here."""
    import numpy as np

    from dossr_cli import imageio
    from dossr_cli.batch.job import run_jobs
    from dossr_cli.batch.params import UpscaleParams

    sample = imageio.encode_image(np.full((16, 16, 3), 0.5, np.float32), None, "png", metadata="none")
    (result,) = run_jobs(pipe, [sample], UpscaleParams(steps=1), [None])
    if isinstance(result, DossrError):
        raise result


def _dtype_name(dtype: Any) -> str:
    from dossr_cli.devices import dtype_name

    return dtype_name(dtype)


def run_server(pipe: Any, limits: Any, model: dict[str, Any], token: str | None, host: str, port: int,
               batch_size: int, result_ttl: float, shutdown_grace: float, quiet: bool, debug: bool) -> None:
    """uvicorn on the app until a signal; the queue told first, so that nothing new starts while it drains."""
    import uvicorn

    from dossr_cli.service.app import IDLE_CONNECTION_SECONDS, create_app
    from dossr_cli.service.jobs import JobQueue

    queue = JobQueue(pipe, batch_size, limits.max_queue, limits.request_timeout, result_ttl)
    app = create_app(queue, limits, model, token)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            """uvicorn's, less re-raising the signal afterwards: the queue drains, then the process exits 0."""
            queue.begin_shutdown(shutdown_grace)
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop waiting for connections
            self.should_exit = True

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:  # the port is bound: say so, with the real one (--port 0 picks a free port)
                bound = self.servers[0].sockets[0].getsockname()[1] if self.servers else port
                shown = f"[{host}]" if ":" in host else host
                say(f"dossr: serving on http://{shown}:{bound}/ ({model['name']}, {model['device']} "
                    f"{model['dtype']}, batches of {batch_size}{', token required' if token else ''}); "
                    "Ctrl-C stops")  # even with --quiet: the one line that says where it listens

    logging.getLogger("dossr.service").addHandler(logging.StreamHandler())
    config = uvicorn.Config(app, host=host.strip("[]"), port=port, log_level="info" if debug else "warning",
                            access_log=debug, timeout_graceful_shutdown=int(shutdown_grace) + STEP_ALLOWANCE,
                            timeout_keep_alive=IDLE_CONNECTION_SECONDS, lifespan="off")
    Server(config).run()
    queue.shutdown(shutdown_grace)
    say("dossr: stopped", quiet)


__all__ = ["is_loopback", "serve"]
