"""The embedded engine: run lambdagrad's SAM template and state machine on moto, in process.

``from lambdagrad.local import LocalEngine`` -- moto and samtranslator are imported only when
an engine starts, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import DeployError, LocalEngine
    from .sam import TemplateError

__all__ = ["DeployError", "LocalEngine", "TemplateError"]


def __getattr__(name: str) -> Any:
    if name in ("LocalEngine", "DeployError"):
        from . import engine

        return getattr(engine, name)
    if name == "TemplateError":
        from .sam import TemplateError

        return TemplateError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
