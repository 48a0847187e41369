"""The package list, which pyproject.toml cannot express alone: every package under ``lightcache/``, plus the
project's top-level ``presets/`` folder shipped as ``lightcache._presets`` (see pyproject.toml)."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["lightcache", "lightcache.*"]), "lightcache._presets"],
    package_dir={"lightcache._presets": "presets"},
)
