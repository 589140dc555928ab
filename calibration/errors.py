"""Errors of ROI calibration: each says why the fit was refused and what to try next."""

from __future__ import annotations

from edge.core.errors import EdgeError


class CalibrationError(EdgeError):
    """The calibration frames do not yield a trustworthy ROI.

    ``diagnostics`` carries what the fit saw when it gave up (``calibration.fit.Diagnostics``: the averaged scene
    and every candidate cluster with the reason it was rejected), so a preview can still show why.
    """

    diagnostics: object | None = None


class TooFewPointsError(CalibrationError):
    """The frames carry too little depth to fit anything (camera too far, covered, or no depth stream)."""


class NoClusterError(CalibrationError):
    """No point cluster plausibly belongs to the drum."""


class FitOutOfLimitsError(CalibrationError):
    """The fitted shape's size is outside the configured sane limits."""
