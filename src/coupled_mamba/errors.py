"""The exception type for errors in what the user gave: files, folders, flags, config values.

The command line prints a :class:`UserInputError` as one line and exits with status 2; any other
exception is a bug and keeps its traceback. It subclasses ValueError so that library callers who
catch ValueError for bad arguments keep working; the command line catches only this subclass, so a
plain ValueError raised by a bug is never passed off as bad input.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """The user's input is wrong: the message names the file, key, row or flag and what was
    expected."""
