"""The one exception type a user is meant to read.

Library code raises :class:`CodeFormerError` for anything the user can fix (a missing or corrupt
weights file, an unreadable picture, an invalid option). Its message is a single line that says
what went wrong and what to do; the command line prints it without a traceback.
"""

from __future__ import annotations


class CodeFormerError(Exception):
    """An error with a one-line, user-facing message that says what to do."""
