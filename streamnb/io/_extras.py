"""Optional extras: packages that only ``pip install 'streamnb[<extra>]'`` installs.

A plain ``pip install streamnb`` runs every core feature; a feature that needs an optional
package imports it through :func:`require` when it is used, so a missing package raises
:class:`~streamnb.exceptions.ConfigError` naming the command that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from streamnb.exceptions import ConfigError

__all__ = ["require"]


def require(module: str, extra: str, feature: str | None = None) -> ModuleType:
    """The module ``module``, which the extra ``extra`` installs.

    Raises :class:`ConfigError` ``"<feature> needs <module>: pip install 'streamnb[<extra>]'"``
    when it cannot be imported (``feature`` defaults to ``streamnb[<extra>]``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = feature or f"streamnb[{extra}]"
        message = f"{what} needs {module}: pip install 'streamnb[{extra}]'"
        missing = isinstance(exc, ModuleNotFoundError) and (
            exc.name is None or module == exc.name or module.startswith(f"{exc.name}.")
        )
        if not missing:  # installed, but broken (a missing shared library, a bad version...)
            message += f" (it is installed but does not import: {exc})"
        raise ConfigError(message) from exc
