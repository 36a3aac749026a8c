"""Compatibility shim: the engine API lives in `workbench.engine.api`."""

from workbench.engine.api import *  # noqa: F403
from workbench.engine.api import __all__  # noqa: F401
