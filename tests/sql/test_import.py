"""``sn.sql`` costs nothing until used: sqlglot loads on the first call."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import streamnb as sn
assert "sqlglot" not in sys.modules, "import streamnb loaded sqlglot"
stream = sn.sql("SELECT auction FROM bid", bid=sn.nexmark(events=10))
assert "sqlglot" in sys.modules
import streamnb.sql.translate  # loading the package's modules leaves sn.sql the function
assert callable(sn.sql) and sn.sql.__name__ == "sql"
print(stream.collect().columns)
"""


def test_sqlglot_loads_on_first_use_and_sn_sql_stays_the_function() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['auction']"
