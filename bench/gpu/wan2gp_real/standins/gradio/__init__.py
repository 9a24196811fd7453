"""Stand-in for the ``gradio`` package (and ``gradio_rangeslider``, ``gradio_client``) for a headless Wan2GP.

Wan2GP's ``wgp.py`` imports gradio at module level and builds its web UI from it, and many ``shared.gradio.*``
modules subclass gradio components, but a generation through its Python API (``shared/api.py``) never draws a
component. The gradio 5.29 wheel alone is 54 MB, more than one device call may carry beside the rest, so this
module stands in for it on the GPU machine (bench/gpu/wan2gp_real): every attribute is a class that can be
called, subclassed, used as a context manager or a decorator, and returns more of the same; every
``gradio.*`` submodule imports. Nothing here renders or serves anything; ``gr.Info`` / ``gr.Warning`` print,
``gr.Error`` is an Exception (wgp raises it for real errors).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

__version__ = "5.29.0"  # what Wan2GP's requirements.txt pins; some code compares versions


class _AnythingType(type):
    """Class attributes too (``gr.Video._format_video``, ``gr.Blocks.load``): Anything, assignable."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return Anything()


class Anything(metaclass=_AnythingType):
    """Callable, subclassable, indexable, iterable (empty), a context manager and a decorator; its class
    attributes are Anything too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._kwargs = kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]  # used as a decorator
        return Anything()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return Anything()

    def __getitem__(self, key: Any) -> Any:
        return Anything()

    def __class_getitem__(cls, key: Any) -> Any:
        return cls

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __bool__(self) -> bool:
        return True

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False

    def __or__(self, other: Any) -> Any:
        return self

    __ror__ = __or__


class Error(Exception):
    """gr.Error: wgp raises it with a message for the user."""

    def __init__(self, message: str = "", *args: Any, **kwargs: Any) -> None:
        super().__init__(message)


def Info(message: str = "", *args: Any, **kwargs: Any) -> None:
    print(f"gradio.Info: {message}")


def Warning(message: str = "", *args: Any, **kwargs: Any) -> None:
    print(f"gradio.Warning: {message}")


def update(**kwargs: Any) -> dict[str, Any]:
    return {"__type__": "update", **kwargs}


_CLASSES: dict[str, type] = {}


def _class(name: str) -> type:
    if name not in _CLASSES:
        _CLASSES[name] = type(name, (Anything,), {"__module__": __name__})
    return _CLASSES[name]


def _module_getattr(module_name: str) -> Any:
    def __getattr__(name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        if name[:1].islower() and name[:1] != "_":
            return Anything()  # functions and constants: callable, iterable, truthy
        return _class(name)

    return __getattr__


__getattr__ = _module_getattr(__name__)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Any ``gradio.*``, ``gradio_rangeslider``, ``gradio_client`` (sub)module: a module of Anything."""

    ROOTS = ("gradio", "gradio_rangeslider", "gradio_client")

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] in self.ROOTS and fullname != "gradio":
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__path__ = []  # a package: its submodules import too
        module.__getattr__ = _module_getattr(spec.name)  # type: ignore[method-assign]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
