"""What every config section shares: the one-line `ConfigError`, the strict frozen model, and
path resolution against the config file's folder."""

from __future__ import annotations

import os
import re

from pydantic import BaseModel, ConfigDict

REMOTE = re.compile(r"^(/vsi|[a-z][a-z0-9+.-]*://)", re.IGNORECASE)


class ConfigError(ValueError):
    """A config that cannot run; `str()` is one line naming the field and the fix."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve(path: str, base_dir: str) -> str:
    """A config path made absolute against the config's folder; URLs and /vsi paths untouched."""
    if REMOTE.match(path) or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))
