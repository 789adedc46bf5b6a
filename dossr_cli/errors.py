"""The one base class for failures a user can act on.

Library code raises these with a one-line message that says what is wrong and what to
do; the command line prints that line (a traceback only with --debug) and exits with
`exit_code`.
"""

from __future__ import annotations


class DossrError(Exception):
    exit_code = 1


class UsageError(DossrError, ValueError):
    """A bad option value or combination: exit code 2, like a command-line usage error."""

    exit_code = 2


class WeightsError(DossrError):
    """Weights that are missing, corrupt, of an unknown layout or unsafe to load."""
