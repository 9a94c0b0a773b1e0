"""The curated public surface of the package."""

from __future__ import annotations

import importlib
import inspect

import zoomtoken


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted, and lists every public name the package exposes, no more."""
    exported = list(zoomtoken.__all__)

    # isort-style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions.
    def kind(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert exported == sorted(exported, key=kind)
    public = {
        name
        for name, value in vars(zoomtoken).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public | {"__version__"} == set(exported)


def test_every_exported_name_resolves() -> None:
    """Each name in __all__ is importable from the package root."""
    for name in zoomtoken.__all__:
        assert getattr(zoomtoken, name) is not None


def test_every_error_derives_from_the_root() -> None:
    """All exported exceptions are ZoomTokenError subclasses."""
    for name in zoomtoken.__all__:
        value = getattr(zoomtoken, name)
        if inspect.isclass(value) and issubclass(value, BaseException):
            assert issubclass(value, zoomtoken.ZoomTokenError)


def test_exception_tree_in_the_docstring_lists_every_error() -> None:
    """The drawn hierarchy in _exceptions names every exception class it defines."""
    module = importlib.import_module("zoomtoken._exceptions")
    doc = module.__doc__ or ""
    for name in module.__all__:
        assert name in doc


def test_version_matches_the_package_metadata() -> None:
    """__version__ is what the installed distribution says."""
    from importlib.metadata import version

    assert zoomtoken.__version__ == version("zoomtoken")
