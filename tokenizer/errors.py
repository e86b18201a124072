"""The one exception type the tokenizer package raises for user-facing problems."""

from __future__ import annotations


class TokenizerError(ValueError):
    """A problem the user can fix: bad input file, bad option, incomplete tokenizer directory.

    The message is complete on its own (it names the file and what is wrong), so callers such
    as the CLI print it without a traceback. It subclasses ``ValueError`` so generic callers that
    already handle bad values keep working.
    """
