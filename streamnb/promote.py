"""Rebuild a notebook's query headless: run its code cells, capture the stream by name.

The notebook's own code builds the ``Stream``, exactly as in the kernel: code cells run in
order in one namespace, with IPython syntax translated by IPython itself and a stand-in
``get_ipython()`` that understands ``%%stream`` and ``%%stream_sql`` cells and ignores magics
that only display or inspect. Starting a stream (``start``, ``show``, ``chart``, ``%%stream``,
``%%stream_sql``) records it instead of running it (:mod:`streamnb.capture`); loading stops once
the wanted query exists.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamnb.capture import capture, capturing
from streamnb.exceptions import ConfigError
from streamnb.io.kafka.client import set_default_bootstrap

_DISPLAY_ONLY = {"load_ext", "reload_ext", "config", "matplotlib", "time", "timeit", "who"}

CellMagic = Callable[[dict[str, Any], str, str], Any]
"""``handler(namespace, line, cell)``: a cell magic run headless (it returns ``capture(...)``)."""

_cell_magics: dict[str, Callable[[], CellMagic]] = {}


def register_cell_magic(name: str, load: Callable[[], CellMagic]) -> None:
    """Teach the headless shell cell magic ``%%name`` of a layer above this one
    (``%%stream_sql``); the package root registers a loader that imports it on first use."""
    _cell_magics[name] = load


def code_cells(path: str | Path) -> list[str]:
    """The code cells of a notebook file, in order."""
    try:
        notebook = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read notebook {str(path)!r}: {exc}") from None
    cells = []
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            cells.append("".join(source) if isinstance(source, list) else source)
    return cells


def to_python(cell: str) -> str:
    """A cell's code with IPython syntax (magics, ``!cmd``) turned into plain calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    return str(TransformerManager().transform_cell(cell))


class HeadlessShell:
    """Stands in for ``get_ipython()`` while notebook code runs without a kernel."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.user_ns = namespace

    def run_cell_magic(self, magic: str, line: str, cell: str) -> Any:
        if magic == "stream":
            return self._stream_cell(line, cell)
        if magic in _cell_magics:
            return _cell_magics[magic]()(self.user_ns, line, cell)
        if magic in ("time", "timeit", "capture"):
            exec(compile(to_python(cell), f"<%%{magic}>", "exec"), self.user_ns)
        return None

    def run_line_magic(self, magic: str, line: str) -> Any:
        if magic == "stream":
            words = shlex.split(line)
            if words[:1] == ["connect"] and len(words) == 2:
                set_default_bootstrap(words[1])  # no network at load time
        return None  # %stream list / status / peek ... only inspect

    def system(self, command: str) -> None:
        return None  # shell escapes do not belong in a job

    def getoutput(self, command: str) -> list[str]:
        return []

    def _stream_cell(self, line: str, cell: str) -> Any:
        from streamnb.stream import Stream

        parser = argparse.ArgumentParser(prog="%%stream", add_help=False)
        parser.add_argument("name")
        parser.add_argument("--show", action="store_true")
        parser.add_argument("--chart")
        parser.add_argument("--to-kafka")
        try:
            args = parser.parse_args(shlex.split(line))
        except SystemExit:
            raise ConfigError(f"%%stream {line}: bad arguments") from None
        where = f"<%%stream {args.name}>"
        tree = ast.parse(to_python(cell), where)
        last = tree.body[-1] if tree.body else None
        if isinstance(last, ast.Expr):
            tree.body.pop()
        else:
            last = None
        exec(compile(tree, where, "exec"), self.user_ns)
        value = None
        if last is not None:
            value = eval(compile(ast.Expression(last.value), where, "eval"), self.user_ns)
        if not isinstance(value, Stream):
            raise ConfigError(f"%%stream {args.name}: the cell's last line is not a Stream")
        if args.to_kafka:
            value = value.to_kafka(args.to_kafka)
        return capture(value, args.name)


def load_notebook_query(path: str | Path, name: str) -> Any:
    """The ``Stream`` that notebook ``path`` starts under ``name``."""
    return load_query(code_cells(path), name, str(path))


def load_query(
    cells: list[str], name: str, origin: str, *, skipped: dict[int, str] | None = None
) -> Any:
    """The ``Stream`` that code ``cells`` (of a notebook, or a session) start under ``name``.

    A cell that fails raises :class:`ConfigError`, unless ``skipped`` is given: then the
    failure is noted there (cell number → reason) and the next cell runs.
    """
    namespace: dict[str, Any] = {"__name__": "__streamnb_notebook__"}
    shell = HeadlessShell(namespace)
    namespace["get_ipython"] = lambda: shell
    with capturing() as streams:
        for number, cell in enumerate(cells, start=1):
            try:
                exec(compile(to_python(cell), f"<{origin} cell {number}>", "exec"), namespace)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if skipped is not None:
                    skipped[number] = reason
                    continue
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(
                    f"{origin}: cell {number} failed while rebuilding query {name!r}: {reason}"
                ) from exc
            if name in streams:
                return streams[name]
    found = ", ".join(repr(n) for n in streams) or "none"
    raise ConfigError(f"{origin} starts no query named {name!r} (queries it starts: {found})")


def load_attribute(locator: str) -> Any:
    """``module:attribute`` or ``file.py:attribute``: a Stream (or a function making one)."""
    from streamnb.stream import Stream

    module_name, _, attribute = locator.rpartition(":")
    if not module_name or not attribute:
        raise ConfigError(f"{locator!r}: expected module:attribute or file.py:attribute")
    if module_name.endswith(".py"):
        spec = importlib.util.spec_from_file_location("__streamnb_job__", module_name)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {module_name!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["__streamnb_job__"] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import module {module_name!r}: {exc}") from None
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if callable(value) and not isinstance(value, Stream):
        value = value()
    if not isinstance(value, Stream):
        raise ConfigError(f"{locator} is a {type(value).__name__}, not a streamnb Stream")
    return value


# The job's text holds user text (the query name, the notebook's and the job's file names)
# only as Python literals made by repr(), in code and in comments: a name is never code.
_JOB = '''"""A streamnb job, written by `streamnb export` / `%stream promote`.

Run it:   python JOB.py [--sink kafka:TOPIC|parquet:PATH|console] [--metrics-port N]
or:       streamnb run JOB.py:STREAM

The notebook's code cells follow, with IPython syntax turned into plain calls; starting a
stream records it instead of running it, and the query runs headless at the end.
"""

# query:    {name!r}
# notebook: {notebook!r}
# job:      {filename!r}

import sys

from streamnb.capture import capturing
from streamnb.promote import HeadlessShell

_namespace = globals()
_shell = HeadlessShell(_namespace)


def get_ipython():
    return _shell


_capture = capturing()
_streams = _capture.__enter__()
'''

_JOB_END = """
STREAM = _streams[{name!r}]
_capture.__exit__(None, None, None)

if __name__ == "__main__":
    from streamnb.worker.cli import main

    sys.exit(main(["run", __file__ + ":STREAM", "--name", {name!r}, *sys.argv[1:]]))
"""


def export_job(notebook: str | Path, name: str, output: str | Path) -> Path:
    """Write a standalone job script that rebuilds and runs query ``name`` of ``notebook``."""
    return write_job(code_cells(notebook), name, output, origin=Path(notebook).name)


def write_job(
    cells: list[str], name: str, output: str | Path, *, origin: str, skip_failing: bool = False
) -> Path:
    """Write the job script of query ``name`` built by code ``cells`` (``streamnb export`` and
    ``%stream promote`` share it). With ``skip_failing`` (a session's history, where some cells
    may have failed), cells that fail while rebuilding are left out, with a comment saying why.
    """
    skipped: dict[int, str] | None = {} if skip_failing else None
    load_query(cells, name, origin, skipped=skipped)  # fail now, not when the job runs
    parts = [_JOB.format(name=name, notebook=origin, filename=Path(output).name)]
    for number, cell in enumerate(cells, start=1):
        head = f"\n# -- cell {number} " + "-" * 60 + "\n"
        if skipped and number in skipped:
            reason = skipped[number].splitlines()[0] if skipped[number] else ""
            parts.append(f"{head}# left out: it failed while rebuilding ({reason})\n")
        else:
            parts.append(head + to_python(cell).rstrip() + "\n")
    parts.append(_JOB_END.format(name=name))
    target = Path(output)
    target.write_text("".join(parts), encoding="utf-8")
    return target
