"""pyproject lists every package the tree holds, so `pip install` ships them all without
setuptools warnings (licence as an SPDX string, the data folder a package of its own)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_and_the_data_are_listed():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(meta["tool"]["setuptools"]["packages"])
    found = {
        ".".join(("ethoprism", *p.parent.relative_to(ROOT).parts))
        for p in ROOT.rglob("__init__.py")
        if not {"tests", ".venv", "build"} & set(p.relative_to(ROOT).parts)
    }
    assert found | {"ethoprism.data"} == listed
    assert {"ethoprism.probe.classify", "ethoprism.probe.retrieve"} <= listed
    data = meta["tool"]["setuptools"]["package-data"]["ethoprism.data"]
    shipped = {p.name for p in (ROOT / "data").iterdir() if any(p.match(g) for g in data)}
    assert shipped == {p.name for p in (ROOT / "data").iterdir()}
    assert isinstance(meta["project"]["license"], str)  # a TOML table is deprecated
