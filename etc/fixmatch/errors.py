"""Errors the user can cause (a bad flag, missing data, a checkpoint that does not fit): raised as UserError
anywhere, they end the script as one line on stderr and exit code 2, never a traceback. Shared module
(identical copies in every method folder)."""
import os
import sys


class UserError(Exception):
    """An error the user caused: printed as one line, exit code 2, nothing written."""


def fail(message):
    """One line on stderr (from the first process only under torchrun), exit code 2."""
    if int(os.environ.get('RANK', 0)) == 0:
        print(f'error: {message}', file=sys.stderr)
    sys.exit(2)
