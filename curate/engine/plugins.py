"""Find datamill's plug-ins: the modules named under the `datamill.plugins` entry-point group.

A plug-in module registers what it defines when imported (stage and source types, executors,
recipe sections, report sections). The engine never names a plug-in: datamill's own are listed in
pyproject.toml like any third-party package's would be, so `pip install my-datamill-stages`
adds stage types without touching datamill.
"""

from __future__ import annotations

from importlib.metadata import entry_points

GROUP = "datamill.plugins"
_loaded = False


class PluginError(ImportError):
    """A plug-in module listed in some package's entry points failed to import."""


def load_plugins() -> None:
    """Import every plug-in module once (later calls return at once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in entry_points(group=GROUP):
        try:
            entry.load()
        except ImportError as err:
            _loaded = False
            raise PluginError(f"datamill plug-in {entry.name!r} ({entry.value}) failed to import: {err}") from err
