"""The user cache folder dossr keeps weights and bookkeeping in."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_root() -> Path:
    """`DOSSR_CACHE_DIR`, else the platform's user cache folder (e.g. ~/.cache/dossr)."""
    override = os.environ.get("DOSSR_CACHE_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir("dossr", appauthor=False))
