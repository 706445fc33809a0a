"""Optional dependencies: say which extra to install instead of a bare ImportError.

hestkit and catalog import without torch, torchvision, timm and peft (the ``train`` extra);
what needs them (SEAL, :meth:`catalog.PairView.to_torch`, the DeepLab tissue segmenter)
calls :func:`require` first.
"""

from __future__ import annotations

from importlib.util import find_spec

from .errors import MissingDependencyError

__all__ = ["TRAIN", "require"]

#: The modules of the ``train`` extra.
TRAIN = ("torch", "torchvision", "timm", "peft")


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        return False


def require(what: str, modules: tuple[str, ...] = TRAIN, extra: str = "train") -> None:
    """Raise :class:`MissingDependencyError` naming ``what`` and the extra when one of
    ``modules`` is not installed (looked up, not imported)."""
    missing = [m for m in modules if not _installed(m)]
    if missing:
        raise MissingDependencyError(
            f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed",
            fix=f"pip install 'hestkit[{extra}]'",
        )
