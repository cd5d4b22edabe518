"""Where notebook output goes: a Jupyter kernel, an IPython shell without one, or neither.

The one check that the live table (:mod:`streamnb.ui.notebook.widgets`) and the live chart
(:mod:`streamnb.ui.notebook.chart`) share. IPython is not imported to find out: when a plain
script has not imported it, there is no shell.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = ["frontend", "kernel_shell"]


def _shell() -> InteractiveShell | None:
    """The running IPython shell, or None (without importing IPython when it is not loaded)."""
    if "IPython" not in sys.modules:  # a plain script: do not import IPython to find out
        return None
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - ipython is a dependency
        return None
    return get_ipython()


def _has_kernel(shell: InteractiveShell) -> bool:
    """Whether ``shell`` runs in a kernel (it talks to a frontend over the Jupyter protocol)."""
    return getattr(shell, "kernel", None) is not None


def frontend() -> Literal["kernel", "shell", "none"]:
    """Where output goes: a Jupyter kernel, an IPython shell without one, or neither."""
    shell = _shell()
    if shell is None:
        return "none"
    return "kernel" if _has_kernel(shell) else "shell"


def kernel_shell() -> InteractiveShell | None:
    """The IPython shell if this runs in a kernel with a frontend protocol, else None."""
    shell = _shell()
    return shell if shell is not None and _has_kernel(shell) else None
