"""Packaging beyond what pyproject.toml can say: the explorer's page scripts live in the top-level
``pages/`` folder (Streamlit pages, not a package), and an installed app needs them beside its code, so
they are installed as ``app/pages`` (``app.settings.pages_dir`` finds either). Everything else is in
pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["sparsity_core", "sparsity_core.*", "app", "app.*"]) + ["app.pages"],
    package_dir={"app.pages": "pages"},
)
