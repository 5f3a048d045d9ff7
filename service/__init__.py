"""mlgate: an online inference and feature-serving gateway."""

from importlib.metadata import version

# pyproject.toml is the one source of the version.
__version__ = version("mlgate")
