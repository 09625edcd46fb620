"""User-facing errors: one line that names the problem, raised for bad input.

The CLI catches ``CoconavError`` and prints ``coconav: error: <message>`` with exit code 2,
never a traceback. Library code raises the most specific subclass; the message says what is
wrong, where (file and line when there is one) and, where possible, how to fix it.

Every one is a ``ValueError`` (a bad value given to coconav), so Python code that already catches
``ValueError`` around a call catches these too:

    try:
        model.generate("")
    except ValueError as err:  # InputError: the question is empty
        print(err)
"""

from __future__ import annotations


class CoconavError(ValueError):
    """Base class of every error caused by the user's input (files, configs, arguments); a ValueError."""


class ConfigError(CoconavError):
    """An unknown config key, a wrong type, an out-of-range value or a YAML syntax error."""


class DataError(CoconavError):
    """A malformed data file or record (bad JSON, missing fields, wrong types, empty file)."""


class CheckpointError(CoconavError):
    """A missing, incomplete or corrupt checkpoint directory."""


class InputError(CoconavError):
    """A bad argument at inference time, such as an empty question or one longer than the context."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type at inference time, such as a question that is not a string: a TypeError
    as well as a ValueError, so either `except` catches it."""
