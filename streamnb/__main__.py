"""``python -m streamnb``: the same as the ``streamnb`` command."""

import sys

from streamnb.worker.cli import main

sys.exit(main())
