"""Errors a user can cause and fix: one clear message and exit code 2, never a traceback."""


class UserError(Exception):
    """A problem in the user's input (file, key, model); the CLI prints it and exits with code 2."""


class TrainingFailed(Exception):
    """A run that started but did not finish well (NaN loss, failed check); the CLI exits with code 1."""
