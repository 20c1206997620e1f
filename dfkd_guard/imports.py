"""Code a config file names as ``"package.module:attribute"``, imported with the config's folder first.

Importing a module runs its code, as any import does: a config names only
modules its author trusts. Data and weights files are never imported.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from dfkd_guard.errors import ConfigError

__all__ = ["import_named"]


def import_named(module_name: str, folder: str | Path | None, field: str) -> ModuleType:
    """Import ``module_name`` with ``folder`` first on ``sys.path`` (taken off again afterwards).

    :param folder: usually the config file's folder, so a module beside the config is found; None: the
        import path as it is.
    :param field: the config field that names the module, for the error.
    :raises ConfigError: naming ``field``, when the import fails or the module's code raises.
    """
    where = str(Path(folder).resolve()) if folder is not None else None
    added = where is not None and where not in sys.path
    if added:
        sys.path.insert(0, where)
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # an import error or an error in the module's code, named with the field
        looked = f" (looked first in {where})" if where else ""
        raise ConfigError(field, f"cannot import {module_name!r}{looked}: {exc!r}") from exc
    finally:
        if added:
            sys.path.remove(where)
