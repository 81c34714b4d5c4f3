"""Exceptions that carry a message meant for the user.

Everything in ``core`` that rejects user input raises :class:`HistogenInputError`
(or a subclass). Widgets turn it into a napari notification and the CLI into a
one-line error with exit status 2, so a user never sees a traceback for bad input.
"""


class HistogenInputError(ValueError):
    """Input the user can fix: the message says what is wrong and what to do."""


class UnknownClassError(HistogenInputError):
    """A mask or point layout uses class ids that its class scheme does not define."""


class CorruptFileError(HistogenInputError):
    """A file could not be parsed as the format it claims to be."""
