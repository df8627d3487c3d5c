"""The one exception type that means "the user asked for something we cannot do"."""


class PrunescopeError(Exception):
    """A bad input or an unsupported request. The CLI prints it as one line and exits with code 2."""


def first_line(error: BaseException, limit: int = 100) -> str:
    """The first line of an error's message (at most `limit` characters), else its type's name: how a
    caught library error becomes part of a one-line message."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
