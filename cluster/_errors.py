"""The root of attune's error tree, and what the CLI does with an error.

Every error attune raises on purpose subclasses :class:`AttuneError`. Its ``exit_code`` is what
``attune`` exits with: 2 for a usage or input error the user can fix (a bad flag, an invalid data
file, an unknown tenant), 1 for a runtime failure (a training that failed, a service that is
down). Anything else is a bug: the CLI prints its traceback. Errors pickle with their message,
so they survive Ray actor boundaries.
"""
from __future__ import annotations

from typing import Mapping, Optional


class AttuneError(Exception):
    """Base class of every error attune raises on purpose; the message says what to do next."""

    exit_code = 1

    def __reduce__(self):
        return (type(self), self.args)


class UsageError(AttuneError):
    """A usage or input error: a bad flag or value, or input the user must fix. Exit status 2."""

    exit_code = 2


def flag_errors(exc, what: str, flags: Optional[Mapping[str, str]] = None) -> str:
    """One readable message from a pydantic ``ValidationError`` of an options model, naming each flag.

    ``flags`` maps a field to its flag or variable where it is not ``--field-name`` (e.g.
    ``{"num_workers": "--workers"}``); ``what`` names the options (``"finetune options"``).
    """
    flags = flags or {}
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        message = err["msg"].removeprefix("Value error, ")
        if not field:
            parts.append(message)
            continue
        flag = flags.get(field, "--" + field.replace("_", "-"))
        parts.append(f"{flag}={err.get('input')!r}: {message}")
    return f"invalid {what}: " + "; ".join(parts)
