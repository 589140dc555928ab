"""Base error of the project: every error a user can meet names the problem and what to do about it."""

from __future__ import annotations


class EdgeError(Exception):
    """An error with a remedy. ``str(err)`` reads ``<problem> — <what to do>`` so logs and CLIs show both."""

    def __init__(self, problem: str, remedy: str = "") -> None:
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"{problem} — {remedy}" if remedy else problem)
