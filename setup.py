"""Build hook only (the project is described in pyproject.toml): ship the trusted documents.

`graphql/*.graphql` lives at the top of the repository (it must not be a Python package: it would
shadow graphql-core), so package data cannot reach it. The wheel gets a copy inside the package,
`app/api/trusted_documents/`, where app/api/documents.py looks first."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithDocuments(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads graphql/ from the checkout
        target = Path(self.build_lib) / "app" / "api" / "trusted_documents"
        target.mkdir(parents=True, exist_ok=True)
        for document in sorted((ROOT / "graphql").glob("*.graphql")):
            shutil.copy2(document, target / document.name)


setup(cmdclass={"build_py": BuildPyWithDocuments})
