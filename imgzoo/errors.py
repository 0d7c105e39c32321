"""The one error type the command line turns into a clear line and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user (a path, a name, a file): shown as one line, no traceback.

    Every part raises a subclass (or this) for anything the user can fix; anything else is a
    bug and keeps its traceback.
    """

    exit_code: int = 2
