"""The one exception type that means "the user asked for something we cannot do"."""


class PrunescopeError(Exception):
    """A bad input or an unsupported request. The CLI prints it as one line and exits with code 2."""
