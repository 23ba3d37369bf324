"""The supervisor's error base: a request that cannot be carried out, for a reason the person who
made it can act on. Front ends show such an error as its message alone (the command line: one
line on stderr and a non-zero exit code); anything else is a bug and keeps its traceback."""
from __future__ import annotations


class UserError(Exception):
    """A request that cannot be carried out; the message says why in one line."""
