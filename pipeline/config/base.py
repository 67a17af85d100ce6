"""What every config section shares: the one-line `ConfigError`, the strict frozen model, and
path resolution against the config file's folder."""

from __future__ import annotations

import os
import re
from typing import Optional

from pydantic import BaseModel, ConfigDict

from pixelbeam.transforms.secrets import hide_secrets

REMOTE = re.compile(r"^(/vsi|[a-z][a-z0-9+.-]*://)", re.IGNORECASE)

# The config's top-level keys (tests/test_api.py checks them against `Config`): a message that
# starts with one of them, dotted or not, names that field; one that starts with `--option` names
# the command-line option.
SECTIONS = ("source", "layers", "regions_outside", "regions", "grid", "output", "fetch", "mask", "sample", "split", "table")
_FIELD = re.compile(r"^(--[A-Za-z0-9_-]+|(?:%s)(?:\.[A-Za-z0-9_]+)*): " % "|".join(SECTIONS))
_UNSET = object()


class ConfigError(ValueError):
    """A config that cannot run; `str()` is one line naming the field and the fix.

    `field` is the dotted config field the message starts with (`grid.patch_size`), or the
    command-line option (`--max_num_workers`); None when the problem is the file as a whole
    (not found, not YAML). Given or, by default, read from the message's start."""

    def __init__(self, message: str, field: Optional[str] = _UNSET):  # type: ignore[assignment]
        message = hide_secrets(message)  # a URL's token or password is never shown
        super().__init__(message)
        self.field: Optional[str] = leading_field(message) if field is _UNSET else field


def leading_field(message: str) -> Optional[str]:
    """The config field or `--option` a one-line message starts with (`grid.scale: ...`), else None."""
    match = _FIELD.match(message)
    return match[1] if match else None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve(path: str, base_dir: str) -> str:
    """A config path made absolute against the config's folder; URLs and /vsi paths untouched."""
    if REMOTE.match(path) or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))
