"""The exception types a user is meant to read.

Library code raises :class:`CodeFormerError` for anything the user can fix (a missing or corrupt
weights file, an unreadable picture, an invalid option). Its message is a single line that says
what went wrong and what to do. Library messages name no command-line flags: an invalid option
raises :class:`OptionError`, which carries the keyword argument's name, and the command line
phrases it with its own flag name.
"""

from __future__ import annotations

__all__ = ["CodeFormerError", "OptionError"]


class CodeFormerError(Exception):
    """An error with a one-line, user-facing message that says what to do."""


class OptionError(CodeFormerError):
    """An option value that cannot be used: ``option`` is the library's keyword (``device``, ``precision`` ...)."""

    def __init__(self, option: str, value: object, reason: str) -> None:
        self.option, self.value, self.reason = option, value, reason
        super().__init__(self.phrased(option))

    def phrased(self, option_name: str) -> str:
        """The message with the option called ``option_name`` (e.g. a command-line flag); a missing value is not shown."""
        return f"{option_name}: {self.reason}" if self.value is None else f"{option_name} {self.value}: {self.reason}"
