"""Factories that return a ready-to-train :class:`~flowlib.Flow` for each model family of the
course. Each trains well with its defaults on the 2-D toys (``dim=2``) and on the 8x8 digits."""

from __future__ import annotations

__all__: list[str] = []
