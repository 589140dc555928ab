"""Config base class: every config model in the project forbids unknown keys so typos fail loudly."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class EdgeModel(BaseModel):
    """Strict pydantic base: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
