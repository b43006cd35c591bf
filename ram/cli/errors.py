"""Turning expected failures into one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click

P = ParamSpec("P")
R = TypeVar("R")


class UserError(click.ClickException):
    """A mistake or an unmet precondition the user can fix; printed as ``Error: <message>``."""


def friendly_errors(*kinds: type[BaseException]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Report the given exception kinds (plus OSError) as a one-line :class:`UserError`."""
    caught: tuple[type[BaseException], ...] = (OSError, *kinds)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except click.ClickException:
                raise
            except caught as exc:
                message = " ".join(str(exc).split()) or type(exc).__name__
                raise UserError(message) from exc

        return wrapper

    return decorate
