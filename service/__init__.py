"""mlgate's serving layer.

`__version__` is the installed distribution's, so pyproject.toml is the one place it is written.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlgate")
except PackageNotFoundError:  # a source tree run without installing it
    __version__ = "0+unknown"
