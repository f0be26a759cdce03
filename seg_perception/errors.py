"""The project's error base class: a user's impossible request, as opposed to a bug.

Every exception the package raises for bad input, bad files or bad settings derives from
:class:`SegPerceptionError`; its message is one line that says what to fix. The command-line
tools print such an error (and a system error on a file, ``OSError``, or an unreadable pickle,
``pickle.UnpicklingError``) as that one line and exit with status 2; anything else is a bug and
keeps its traceback. Errors are best turned into project errors where they happen, where the
message can say what to fix.
"""


class SegPerceptionError(Exception):
    """Something the user asked for is impossible; ``str()`` says what to fix, in one line."""


class UsageError(SegPerceptionError, ValueError):
    """A command-line argument (or a combination of them) is impossible."""
