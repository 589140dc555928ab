"""Config base class and the one loader of versioned YAML files (roi.yaml, scoring.yaml, …).

Every config model forbids unknown keys so typos fail loudly; every file error names the file, the bad key
and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from edge.core.errors import EdgeError


class EdgeModel(BaseModel):
    """Strict pydantic base: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


M = TypeVar("M", bound=BaseModel)


def validation_details(err: ValidationError) -> str:
    """``key.path: message (got value)`` for every error, joined: what a user needs to fix a file."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in err.errors())


def load_versioned_yaml(
    path: Path,
    model: type[M],
    *,
    what: str,
    version: int,
    error: type[EdgeError],
    create: str,
    recreate: str,
) -> M:
    """Read ``path`` into ``model``; ``what`` names the file kind ("ROI file"), ``create`` says how to make one
    and ``recreate`` how to redo it (both end up in the error's remedy)."""
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {path} not found", create) from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{what} {path} cannot be read: {e}", f"check the file, or {recreate}") from None
    except yaml.YAMLError as e:
        raise error(f"{what} {path} is not valid YAML: {e}", f"fix the syntax, or {recreate}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path} is empty or not a mapping", recreate)
    if data.get("schema_version") != version:
        raise error(
            f"{what} {path} has schema_version {data.get('schema_version')!r}, this build reads {version}",
            f"{recreate} with this version",
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise error(f"{what} {path} is invalid: {validation_details(e)}", f"fix the named key, or {recreate}") from None
