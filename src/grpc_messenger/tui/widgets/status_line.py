"""The line above the footer: the replicas in one plain sentence, and the last send's outcome."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class StatusLine(Static):
    """Says plainly how many replicas are up; coloured by severity."""

    def show(self, sentence: str, severity: str, *, last_send: str) -> None:
        """Replace the text; `severity` is "ok", "degraded" or "down"."""
        for name in ("ok", "degraded", "down"):
            self.set_class(name == severity, f"-{name}")
        # plain Text: the sentence may quote an address or a replica's error, never markup
        self.update(Text(sentence + (f"   ·   last send: {last_send}" if last_send else "")))
