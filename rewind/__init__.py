"""rewind: parameterization-aware rewinding of PEFT finetunes."""

from importlib.metadata import PackageNotFoundError, version

from .errors import RewindError

try:
    __version__ = version("rewind")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+src"

__all__ = ["RewindError", "__version__"]
