"""The one exception type the CLI turns into a single clear line and exit code 2."""


class BranchmergeError(Exception):
    """Bad input a person can act on: the message names the file, field or port and what to do."""
