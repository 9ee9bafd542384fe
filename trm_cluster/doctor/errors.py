"""The doctor's two ways to refuse a verdict, each with its exit status (doctor/cli.py)."""


class BadInput(ValueError):
    """The request cannot be run as given (exit 2, one line)."""


class Untestable(RuntimeError):
    """A run of the loop did not do what the comparison needs (exit 3)."""
