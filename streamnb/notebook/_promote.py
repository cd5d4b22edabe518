"""``%stream promote NAME --to PATH``: a standalone job file from the cell that defined NAME.

A first version, until the worker's ``streamnb export`` exists: the job holds the imports the
session ran, then the ``%%stream`` cell's code with its last expression bound to ``stream``,
then lines that start the query and follow it on the console until it ends (Ctrl-C or
SIGTERM stop it cleanly, flushing sinks). Names the cell takes from other cells must be added
to the job by hand.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

from streamnb.exceptions import ConfigError

_HEADER = '''"""streamnb job {name!r}, written by `%stream promote` from its %%stream cell.

Run it with `python {filename}`. Ctrl-C or SIGTERM stops the query cleanly (sinks are
flushed). This is a first version of promotion: it holds that cell's code and the session's
imports only, so names the cell took from other cells must be added here by hand.
"""

import signal

import polars as pl

import streamnb as sn
from streamnb.sinks.console import watch
'''

_FOOTER = """

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C
    query = stream.start({name!r})
    watch(query)  # a live table on a terminal, snapshots in a log; stops the query at the end
    query.wait(0)  # raises QueryFailed if the query failed
"""


def session_imports(cells: Iterable[str]) -> list[str]:
    """The top-level import statements of the session's cells, in order, without repeats."""
    seen: dict[str, None] = {}
    for cell in cells:
        try:
            tree = ast.parse(cell)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                seen.setdefault(ast.unparse(node), None)
    return list(seen)


def bind_last_expression(cell: str, target: str = "stream") -> str:
    """``cell`` with its last expression assigned to ``target`` (the code before it kept as is)."""
    try:
        tree = ast.parse(cell)
    except SyntaxError as exc:
        raise ConfigError(
            f"the cell is not plain Python ({exc.msg}, line {exc.lineno}); "
            "promote needs a cell without IPython syntax"
        ) from None
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        raise ConfigError("the cell's last statement is not an expression giving a Stream")
    last = tree.body[-1]
    lines = cell.splitlines(keepends=True)
    line = lines[last.lineno - 1].encode()
    before = "".join(lines[: last.lineno - 1]) + line[: last.col_offset].decode()
    before = before.rstrip().rstrip(";").rstrip()
    expression = ast.get_source_segment(cell, last.value) or ast.unparse(last.value)
    prefix = f"{before}\n" if before else ""  # only comments can follow the expression
    return f"{prefix}{target} = (\n    {expression}\n)\n"


def job_source(
    name: str,
    cell: str,
    *,
    filename: str,
    to_kafka: str | None = None,
    imports: Iterable[str] = (),
) -> str:
    """The text of a job file that runs the query ``name`` defined by ``cell``."""
    known = {
        "import signal",
        "import polars as pl",
        "import streamnb as sn",
        "from streamnb.sinks.console import watch",
    }
    extra = [line for line in imports if line not in known]
    body = bind_last_expression(cell)
    if to_kafka is not None:
        body += f"stream = stream.to_kafka({to_kafka!r})\n"
    parts = [_HEADER.format(name=name, filename=filename)]
    if extra:
        parts.append("\n".join(extra) + "\n")
    parts.append("\n" + body)
    text = "\n".join(parts).rstrip("\n") + "\n" + _FOOTER.format(name=name)
    ast.parse(text)  # the job must at least be valid Python
    return text
