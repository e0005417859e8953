"""Annotation helpers for run-time type checking (``pytest --jaxtyping-packages=cliff_lens,...``).

The test suite runs every annotated function of cliff_lens under jaxtyping + beartype, so an
annotation is also a run-time contract. Some public entry points validate an argument
themselves and turn a bad value into a message that names the accepted forms (an unknown
``mode=``, a malformed position spec, a 2-D tensor where ``[n, layers, heads]`` is needed, ...);
a run-time checker that rejected the value first would replace that message with a generic one.

``Validated[X]`` marks such a parameter (or dataclass field): static checkers (mypy) read it
as ``X``, so callers are still checked; at run time it is ``object``, so the value reaches the
function's own validation (or normalisation: e.g. head lists given as lists of lists).
:func:`static_type_hints` reads annotations the way mypy does (``Validated[X]`` as ``X``), for
code that introspects them.
"""

from __future__ import annotations

import sys
import typing
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

__all__ = ["Validated", "static_type_hints"]

T = TypeVar("T")

if TYPE_CHECKING:
    Validated = Annotated[T, "validated by the function itself"]
else:

    class Validated:
        """``Validated[X]`` is ``object`` at run time (see the module docstring)."""

        def __class_getitem__(cls, item: Any) -> Any:
            return object


class _Static:
    """``Validated`` as static checkers read it: ``_Static[X]`` is ``X``."""

    def __class_getitem__(cls, item: Any) -> Any:
        return item


def static_type_hints(obj: Any) -> dict[str, Any]:
    """``typing.get_type_hints(obj)`` with ``Validated[X]`` resolved to ``X`` (not ``object``)."""
    module = sys.modules[obj.__module__]
    return typing.get_type_hints(obj, globalns={**vars(module), "Validated": _Static})
