"""The Typer app and the one error handler that turns failures into one line and an exit code.

Exit codes: 0 success, 1 some inputs failed (or weights/runtime failure), 2 usage error,
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated

import typer

from dossr_cli import __version__
from dossr_cli.cli import batch, bench, eval, serve, upscale, weights
from dossr_cli.cli.console import stderr
from dossr_cli.errors import DossrError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

app = typer.Typer(
    name="dossr",
    help="Diffusion super-resolution with DoSSR (NeurIPS 2024).\n\n"
    "Exit codes: 0 success, 1 some inputs failed, 2 usage error, 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("upscale", no_args_is_help=True)(upscale.upscale)
app.command("batch", no_args_is_help=True)(batch.batch)
app.command("bench")(bench.bench)
app.command("serve")(serve.serve)
app.command("eval", no_args_is_help=True)(eval.eval_command)
app.add_typer(weights.app, name="weights")


def _version(value: bool) -> None:
    if value:
        print(f"dossr {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Diffusion super-resolution with DoSSR."""


def _is_click_error(error: BaseException) -> bool:
    """Typer vendors Click and keeps its exception classes private: recognise them by behaviour."""
    return callable(getattr(error, "show", None)) and isinstance(getattr(error, "exit_code", None), int)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, map every failure to one stderr line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        code = app(args=args, prog_name="dossr", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        stderr.print("dossr: interrupted", markup=False)
        sys.exit(EXIT_INTERRUPTED)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except DossrError as error:
        if debug:
            traceback.print_exc()
        stderr.print(f"dossr: error: {error}", markup=False)
        sys.exit(error.exit_code)
    except Exception as error:  # noqa: BLE001 - the one place every other failure becomes one line
        if _is_click_error(error):
            if type(error).__name__ == "NoArgsIsHelpError":
                error.show()  # a bare `dossr upscale`: its help
            else:  # one line, like every other error, with where to look
                context = getattr(error, "ctx", None)
                hint = f" (see '{context.command_path} --help')" if context is not None else ""
                stderr.print(f"dossr: error: {error.format_message()}{hint}", markup=False)
            sys.exit(error.exit_code)
        if type(error).__name__ == "Abort":  # the vendored Click's Abort: Ctrl-C at a prompt
            stderr.print("dossr: interrupted", markup=False)
            sys.exit(EXIT_INTERRUPTED)
        if debug:
            traceback.print_exc()
        stderr.print(f"dossr: error: {type(error).__name__}: {error} (run with --debug for details)", markup=False)
        sys.exit(EXIT_FAILED)
    if code == EXIT_INTERRUPTED:  # Typer turns Ctrl-C inside a command into this code, silently
        stderr.print("dossr: interrupted", markup=False)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
