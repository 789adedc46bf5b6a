"""What a non-editable install ships: every package, and the weights manifest."""

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
