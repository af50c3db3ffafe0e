"""A small mixin giving frozen result dataclasses text and HTML views of their numbers.

Results follow scipy/statsmodels: numbers live in fields and ``summary()`` returns a
DataFrame (never pre-formatted strings); ``to_text``/``_repr_html_`` format on request.
"""
from __future__ import annotations

import html

__all__ = ["ResultMixin"]


class ResultMixin:
    """Mixin for ``@dataclass(frozen=True)`` results that define ``summary()``."""

    _title: str = ""

    def summary(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def _header_lines(self) -> list[str]:
        """Key facts shown above the table (override to add n, convergence, ...)."""
        return []

    def to_text(self, decimals: int = 3) -> str:
        """The summary table as fixed-width text, preceded by the header lines."""
        import pandas as pd

        title = self._title or type(self).__name__
        tab = self.summary()
        with pd.option_context("display.width", 200, "display.max_columns", 50):
            body = tab.round(decimals).to_string() if hasattr(tab, "round") else str(tab)
        return "\n".join([title, *self._header_lines(), body])

    def _repr_html_(self) -> str:
        title = html.escape(self._title or type(self).__name__)
        head = "".join(f"<div>{html.escape(s)}</div>" for s in self._header_lines())
        tab = self.summary()
        return f"<div><strong>{title}</strong>{head}{tab.to_html(float_format=lambda v: f'{v:.4g}')}</div>"

    def __str__(self) -> str:
        return self.to_text()
