"""Our converted bundles from the Hugging Face Hub (`--weights hf:ORG/REPO[@REV]`), through
huggingface_hub's snapshot_download; offline and failure messages as download.py's."""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import tqdm as hf_tqdm

try:  # huggingface_hub 2.x talks through httpx2, 1.x through httpx
    from httpx2 import HTTPError as _HubTransportError
except ImportError:  # pragma: no cover
    from httpx import HTTPError as _HubTransportError  # type: ignore[no-redef]

from dossr_cli.checkpoint.bundle import CONFIG_NAME, BundleError, verify_bundle
from dossr_cli.checkpoint.download import DownloadError, one_line, refuse_if_offline
from dossr_cli.errors import UsageError

HF_BUNDLE_PATTERNS = [CONFIG_NAME, "*.safetensors"]
_HF_SPEC = re.compile(r"hf:([A-Za-z0-9][-\w.]*/[A-Za-z0-9][-\w.]*)(?:@(\S+))?")


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """"hf:ORG/REPO@REV" -> ("ORG/REPO", "REV"); "hf:ORG/REPO" -> ("ORG/REPO", None)."""
    match = _HF_SPEC.fullmatch(spec.strip())
    if match is None:
        raise UsageError(f"{spec!r} is not a Hugging Face bundle: expected hf:ORG/REPO or hf:ORG/REPO@REVISION")
    return match[1], match[2]


class _SilentTqdm(hf_tqdm):
    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _hf_endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub read its copy when imported)."""
    return (os.environ.get("HF_ENDPOINT", "").strip() or hf_constants.ENDPOINT).rstrip("/")


def _hf_snapshot(repo_id: str, revision: str | None, cache_dir: Path | None, progress: bool, *,
                 local_only: bool, force: bool) -> Path:
    return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, endpoint=_hf_endpoint(),
                                  allow_patterns=HF_BUNDLE_PATTERNS, local_files_only=local_only,
                                  force_download=force, tqdm_class=None if progress else _SilentTqdm))


def _hf_download(where: str, repo_id: str, revision: str | None, cache_dir: Path | None, progress: bool,
                 force: bool) -> Path:
    endpoint = _hf_endpoint()
    try:
        return _hf_snapshot(repo_id, revision, cache_dir, progress, local_only=False, force=force)
    except GatedRepoError as error:
        raise DownloadError(f"{where} is gated on {endpoint}: accept its terms there and log in with "
                            "`hf auth login`") from error
    except RepositoryNotFoundError as error:
        raise DownloadError(f"{where}: no such model repository on {endpoint} (if it is private, log in with "
                            "`hf auth login`)") from error
    except RevisionNotFoundError as error:
        raise DownloadError(f"{where}: the repository has no revision {revision!r}") from error
    except LocalEntryNotFoundError as error:  # the Hub could not be reached and the cache cannot stand in
        reason = f" ({one_line(error.__cause__)})" if error.__cause__ is not None else ""
        raise DownloadError(f"cannot reach {endpoint} to download {where}{reason}, and it is not in the cache: "
                            "check the connection (or HF_ENDPOINT) and run again") from error
    except HfHubHTTPError as error:
        raise DownloadError(f"{endpoint} refused {where}: {one_line(error)}") from error
    except (_HubTransportError, OSError) as error:  # transport errors; the size consistency check (OSError)
        raise DownloadError(f"downloading {where} from {endpoint} failed: {one_line(error)}; run again to "
                            "continue (finished files stay in the cache)") from error


def download_hf_bundle(repo_id: str, revision: str | None = None, *, cache_dir: Path | None = None,
                       progress: bool = True, refresh: bool = False) -> Path:
    """A dossr bundle from the Hugging Face Hub: the local snapshot folder, verified.

    Only `dossr.json` and `*.safetensors` are fetched, through huggingface_hub's cache
    (`cache_dir`, else HF_HUB_CACHE), which skips files it has and honours HF_ENDPOINT.
    A bundle already complete in the cache is returned without any network call (so a
    branch such as `main` is not re-checked; `refresh=True` asks the Hub first). A cached
    copy that fails verification is fetched again, replacing what was cached.
    """
    where = f"hf:{repo_id}" + (f"@{revision}" if revision else "")
    cache_problem: BundleError | None = None
    if not refresh:
        try:
            cached = _hf_snapshot(repo_id, revision, cache_dir, progress, local_only=True, force=False)
        except LocalEntryNotFoundError:
            cached = None
        if cached is not None:
            try:
                verify_bundle(cached, trust_stamp=True)
                return cached
            except BundleError as error:
                cache_problem = error
    cache = Path(cache_dir) if cache_dir is not None else Path(hf_constants.HF_HUB_CACHE)
    if refresh:
        state = "a refresh asks the Hub"
    elif cache_problem is not None:
        state = f"its cached copy fails verification ({cache_problem})"
    else:
        state = f"it is not cached in {cache}"
    refuse_if_offline(where, f"{state}; unset it to download from {_hf_endpoint()}")
    folder = _hf_download(where, repo_id, revision, cache_dir, progress, force=False)
    try:
        verify_bundle(folder)
        return folder
    except BundleError as error:
        if cache_problem is None:  # freshly downloaded and still wrong: the repository's files disagree
            raise DownloadError(f"the bundle downloaded from {where} ({_hf_endpoint()}) fails verification: {error}; "
                                "run again, and if it recurs the repository's files do not match its "
                                f"{CONFIG_NAME}") from error
    folder = _hf_download(where, repo_id, revision, cache_dir, progress, force=True)
    try:
        verify_bundle(folder)
    except BundleError as error:
        raise DownloadError(f"the bundle downloaded again from {where} ({_hf_endpoint()}) still fails verification: "
                            f"{error}; the repository's files do not match its {CONFIG_NAME}") from error
    return folder
