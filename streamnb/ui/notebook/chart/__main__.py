"""``python -m streamnb.ui.notebook.chart --build-bundle``: rebuild the chart's JavaScript bundle.

The command line itself is :func:`streamnb.ui.notebook.chart.bundle.main`.
"""

from __future__ import annotations

from streamnb.ui.notebook.chart.bundle import main

if __name__ == "__main__":
    raise SystemExit(main())
