"""Errors of the export part (torch-free, so the service can catch them)."""

from __future__ import annotations

from imgzoo.errors import UserError


class ExportError(UserError):
    """An export that cannot be done as asked: bad name, repository, version or failed parity.

    Nothing is left in the repository when it is raised.
    """


class RepositoryError(ExportError):
    """A model repository that is missing, not a directory, or not writable."""
