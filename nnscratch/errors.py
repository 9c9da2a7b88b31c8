"""The error a user's bad input raises: the commands print its message as one line and exit with 2."""


class UsageError(Exception):
    """Bad input from the user (a setting, a file, a dataset); the message says what is wrong and how to fix it."""
