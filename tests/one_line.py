"""The suite's check of the one-line error promise, shared by the config and grid tests."""

from __future__ import annotations

import pytest

from dinolab.config import ConfigError


def error_of(fn, *args, **kwargs) -> str:
    """The ConfigError ``fn(*args, **kwargs)`` raises, asserted to be one line."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, f"error is not one line: {msg!r}"
    return msg
