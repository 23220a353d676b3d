"""A run's params against its baseline's, as the ``-S key=value`` flags of the ``dvc exp run`` that reruns it."""

from __future__ import annotations

import json
import shlex
from typing import Any


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def params_diff(baseline: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    changed = {key: value for key, value in params.items() if key not in baseline or baseline[key] != value}
    changed.update({key: REMOVED for key in baseline if key not in params})
    return changed


class Removed:
    def __repr__(self) -> str:
        return "(removed)"


REMOVED = Removed()


def set_flag(key: str, value: Any) -> str:
    """``key=value`` as ``dvc exp run -S`` takes it (values in YAML), quoted for a POSIX shell when needed."""
    if value is REMOVED:
        return f"{key} (removed)"
    return shlex.quote(f"{key}={yaml_value(value)}")


def yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, str) and _yaml_reads_back(value) != value:  # "", "16", "true", "a: b": quoted
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def _yaml_reads_back(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None
