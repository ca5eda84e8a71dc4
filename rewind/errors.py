"""One exception type for every user-facing failure: the CLI prints its message as one line."""


class RewindError(Exception):
    """Bad input or a refused operation. The message names the problem and, where there is one, the fix."""
