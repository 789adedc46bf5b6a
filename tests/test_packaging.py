"""What a non-editable install ships: every package, and the weights manifest."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "dossr_cli").rglob("__init__.py")}
    assert on_disk <= listed, f"missing from pyproject's packages: {sorted(on_disk - listed)}"
    assert config["package-dir"]["dossr_cli._weights"] == "weights"
    assert (ROOT / "weights" / "manifest.json").is_file()


def test_the_wheel_ships_the_page_and_manifest_without_setuptools_warnings(tmp_path):
    """A built wheel (what `pip install .` installs) holds the web page's files and the weights manifest, and
    setuptools says nothing of packages it would ignore: data folders left out of `packages` are dropped by
    newer setuptools, and the page would then 404 on an installed tool."""
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ and stale files there
    for part in ("dossr_cli", "weights"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path), str(source)], check=False, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr
    (wheel,) = tmp_path.glob("dossr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    page = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dossr_cli" / "service" / "page").iterdir()}
    assert page <= names, f"missing from the wheel: {sorted(page - names)}"
    assert "dossr_cli/_weights/manifest.json" in names
