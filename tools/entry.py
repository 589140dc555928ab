"""What every command-line tool's ``main`` does with an error the user can fix: one line, no traceback, exit 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec

from edge.core.errors import EdgeError

P = ParamSpec("P")
EXIT_FIXABLE = 2  # an EdgeError: the line names the problem and what to do


def one_line_errors(prefix: str) -> Callable[[Callable[P, int]], Callable[P, int]]:
    """Decorate a tool's ``main``: an ``EdgeError`` escaping it is printed on stderr as ``<prefix>: <problem> —
    <remedy>`` and ``main`` returns ``EXIT_FIXABLE``; anything else passes through unchanged."""

    def decorate(main: Callable[P, int]) -> Callable[P, int]:
        @functools.wraps(main)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except EdgeError as err:
                print(f"{prefix}: {err}", file=sys.stderr)
                return EXIT_FIXABLE

        return guarded

    return decorate
