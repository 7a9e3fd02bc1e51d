"""The registry config as a Dagster resource."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import dagster as dg

from valuebias.config import RegistryConfig, load_config


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> RegistryConfig:
    return load_config(path)


class Registry(dg.ConfigurableResource):
    """Reads ``valuebias.yaml`` (or the file named by ``config_path``); reloaded when the file changes."""

    config_path: str

    def load(self) -> RegistryConfig:
        path = Path(self.config_path).expanduser().resolve()
        mtime = path.stat().st_mtime_ns if path.exists() else 0
        return _load(str(path), mtime)
