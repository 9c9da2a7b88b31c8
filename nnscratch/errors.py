"""The errors a user's bad input raises: the commands print the message as one line and exit with 2."""


class UsageError(Exception):
    """Bad input from the user (a setting, a file, a dataset); the message says what is wrong and how to fix it."""


class CheckpointError(UsageError, ValueError):
    """A model file, checkpoint or state dict that cannot be used: missing, damaged, not nnscratch's, or
    not for this model. The message names the file (or the state) and what is wrong."""
