"""The error every data-loading module raises for input the user can fix."""

from __future__ import annotations

from imgzoo.errors import UserError


class DataError(UserError):
    """A data set that cannot be loaded: missing or empty directory, wrong layout, no images.

    The message is one line that says what was expected, so the command line can show it as is.
    """
