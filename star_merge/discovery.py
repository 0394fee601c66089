"""Self-registering plug-in folders (adapters, tasks): import every module of a package's folder."""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Collection

__all__ = ["import_submodules"]


def import_submodules(package: str, module_file: str, skip: Collection[str] = ()) -> None:
    """Import every module in the folder of ``module_file`` (a module of ``package``) but those in ``skip``.

    Called by a registry module as ``import_submodules(__package__, __file__)``: importing a plug-in module
    registers it, and the registry never imports its own package (no cycle through ``__init__``).
    """
    for info in pkgutil.iter_modules([os.path.dirname(os.path.abspath(module_file))]):
        if info.name not in skip and info.name != "__init__":
            importlib.import_module(f"{package}.{info.name}")
