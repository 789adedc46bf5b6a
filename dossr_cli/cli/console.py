"""stderr for people, stdout for data: the two consoles every command shares."""

from __future__ import annotations

import os
import re
import sys

from rich.console import Console

# Rich honours NO_COLOR itself; plain output when stderr is not a terminal. No emoji codes:
# a file named "x:smile:.png" must reach stdout's JSON and stderr's messages unchanged.
stderr = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
stdout = Console(highlight=False, soft_wrap=True, emoji=False)


def error_line(subject: str, message: str) -> str:
    """`dossr: error: SUBJECT: MESSAGE`, naming the subject once.

    Library messages often open with the file's quoted path already ("'a/b.png': ..."):
    that opening gives way to the subject as the user typed it.
    """
    name = subject.replace("\\", "/").rsplit("/", 1)[-1]
    quoted = re.match(r"^'([^']*)': (.*)$", message, re.DOTALL)
    if quoted and quoted.group(1).replace("\\", "/").endswith(name):
        message = quoted.group(2)
    elif name and name in message:
        return f"dossr: error: {message}"
    return f"dossr: error: {subject}: {message}"


def say(message: str, quiet: bool = False) -> None:
    """A line for people, on stderr."""
    if not quiet:
        stderr.print(message, markup=False)


def interactive() -> bool:
    """May we ask a question? Only with a terminal on both ends, and never under CI."""
    return sys.stdin.isatty() and sys.stderr.isatty() and not os.environ.get("CI")


def confirm(question: str) -> bool:
    if not interactive():
        return False
    stderr.print(question + " [y/N] ", end="", markup=False)
    try:
        return input().strip().lower() in ("y", "yes")
    except EOFError:
        return False
