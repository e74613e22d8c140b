"""Build hook (everything else is in pyproject.toml): write the git commit the package is built
from into it, as `k3net/_commit.txt`, so that an installed wheel tells `k3net --version`, /info
and `k3net_build_info` its commit. Built outside a git checkout, the file is not written."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _git_commit() -> str | None:
    # k3net.version by its path: the package itself is not importable while it is being built.
    spec = importlib.util.spec_from_file_location("_k3net_version", ROOT / "k3net" / "version.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    commit: str | None = module.git_commit(ROOT)
    return commit


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        commit = _git_commit()
        if commit and not self.editable_mode:
            target = Path(self.build_lib) / "k3net" / "_commit.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(commit + "\n")


setup(cmdclass={"build_py": BuildPy})
