"""semid.service: everything online or index-related, in layers (see docs/architecture.md).

``__version__`` is read from the installed package's metadata, its only home (pyproject.toml).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("semid")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
