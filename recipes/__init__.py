"""The recipes that ship with datamill; `datamill run NAME` finds them by name."""

from importlib import resources


def builtin_recipe_names() -> list[str]:
    """Names of the shipped recipes (file names without `.yaml`)."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))
