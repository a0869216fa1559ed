"""One YAML loader for the packaged data files and the user's files.

Why: PyYAML's pure-Python parser costs about 40 ms on the ATT&CK data file alone, and every ``quaywatch detect``
reads it, the rules and several reference lists; libyaml's safe loader (when PyYAML was built with it, as its
wheels are) reads the same documents with the same marks about ten times faster. Both are safe loaders: no
arbitrary objects.
"""

from __future__ import annotations

from typing import Any

import yaml

#: libyaml's safe loader when PyYAML has it, else the pure-Python one.
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """The document in ``text``, read with :data:`SAFE_LOADER`; raises ``yaml.YAMLError`` as ``yaml.safe_load``."""
    return yaml.load(text, Loader=SAFE_LOADER)
