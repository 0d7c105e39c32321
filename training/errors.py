"""Errors of the training loop the user can fix (one line at the command line)."""

from __future__ import annotations

from imgzoo.errors import UserError


class TrainingError(UserError):
    """A run that cannot start or continue: a bad device, an incompatible resume, ..."""
