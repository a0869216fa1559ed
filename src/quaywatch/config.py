"""The configuration file: ``quaywatch.toml`` in the working directory, or the file given with ``--config``.

It sets defaults for the command-line options of the same name, so that a port writes its database, policy and
declared inventory once; an option given on the command line always wins. The file is read with ``tomllib``; unknown
keys and wrong types are errors naming the file, line and key, because a silently ignored ``polcy = ...`` would mean
running without the site policy.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("quaywatch.toml")

#: Key -> (expected type description, parameter name of the commands it sets).
KEYS: dict[str, tuple[str, str]] = {
    "database": ("a string (path of the DuckDB file)", "database"),
    "policy": ("a string (path of the site policy YAML)", "policy_file"),
    "inventory": ("a string (path of the declared inventory CSV)", "inventory"),
    "threads": ("an integer from 1 to 256", "threads"),
    "decoders": ("a string ('all', 'none' or names) or a list of decoder names", "decoders"),
    "suppressions": ("a string (path of a suppressions YAML file applied when alerts are read)", "suppressions_file"),
    "geoip": ("a string or a list of strings (paths of MaxMind DB files: country, ASN)", "geoip_files"),
}
PATH_KEYS = ("database", "policy", "inventory", "suppressions")
#: Keys holding one path or a list of paths; the value is always a tuple of paths.
PATH_LIST_KEYS = ("geoip",)


class ConfigError(ValueError):
    """A configuration file problem; ``str()`` is ``file:line: key: message``."""


@dataclass(frozen=True, slots=True)
class Config:
    """The values of a configuration file, paths resolved against the file's folder."""

    file: Path
    values: dict[str, Any]

    def defaults(self, parameter_names: set[str]) -> dict[str, Any]:
        """Option defaults for one command, given the names of its parameters."""
        out = {}
        for key, value in self.values.items():
            parameter = KEYS[key][1]
            if parameter and parameter in parameter_names:
                out[parameter] = value
        return out


def _line_of(text: str, key: str) -> int:
    """The line where ``key`` is assigned: tomllib reports lines of syntax errors only."""
    match = re.search(rf"^[ \t]*{re.escape(key)}[ \t]*=", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else 0


def _valid(key: str, value: Any) -> bool:
    if key in PATH_KEYS:
        return isinstance(value, str) and bool(value)
    if key in PATH_LIST_KEYS:
        paths = [value] if isinstance(value, str) else value
        return isinstance(paths, list) and all(isinstance(v, str) and v for v in paths)
    if key == "threads":
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 256
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))  # decoders


def load_config(path: Path) -> Config:
    """Read and check one configuration file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}:0: (file): cannot read: {error}") from error
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        line = getattr(error, "lineno", None)
        if line is None:  # Python < 3.14: "... (at line 3, column 5)"
            found = re.search(r"at line (\d+)", str(error))
            line = int(found.group(1)) if found else 0
        raise ConfigError(f"{path}:{line}: (toml): not valid TOML: {error}") from error
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key not in KEYS:
            raise ConfigError(f"{path}:{_line_of(text, key)}: {key}: unknown key; allowed: {', '.join(KEYS)}")
        if not _valid(key, value):
            raise ConfigError(f"{path}:{_line_of(text, key)}: {key}: expected {KEYS[key][0]}, got {value!r}")
        if key in PATH_KEYS:
            value = str((path.parent / value) if not Path(value).is_absolute() else Path(value))
        if key in PATH_LIST_KEYS:
            value = tuple(
                (path.parent / item) if not Path(item).is_absolute() else Path(item)
                for item in ([value] if isinstance(value, str) else value)
            )
        if key == "decoders" and isinstance(value, list):
            value = ",".join(value)
        values[key] = value
    return Config(path, values)


def find_config(explicit: Path | None) -> Config | None:
    """The ``--config`` file, else ``quaywatch.toml`` of the working directory if there is one."""
    if explicit is not None:
        return load_config(explicit)
    if DEFAULT_CONFIG.is_file():
        return load_config(DEFAULT_CONFIG)
    return None
