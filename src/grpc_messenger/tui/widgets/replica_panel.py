"""The right pane: each replica up or down with its latency, the outbox, and who holds the message in view."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from grpc_messenger.client.subscribe import StreamState
from grpc_messenger.model import ReplicaStatus
from grpc_messenger.tui.format import latency


class ReplicaPanel(Vertical):
    """Replicas as the client sees them; refreshed by the inbox screen every few seconds.

    A replica is "up" when it answered the last check (with its round trip), and
    "live" while its stream of new mail is open.
    """

    BORDER_TITLE = "Replicas"

    def compose(self) -> ComposeResult:
        table: DataTable[Text | str] = DataTable(id="replica-table", cursor_type="none", zebra_stripes=True)
        # fixed widths: the panel never scrolls sideways; long addresses end in "…"
        table.add_column("replica", width=18)
        table.add_column("state", width=9)
        table.add_column("latency", width=8)
        yield table
        yield Static(id="outbox")
        yield Static(id="in-view")

    def show(
        self, servers: Sequence[str], statuses: Sequence[ReplicaStatus] | None, streams: Sequence[StreamState]
    ) -> None:
        """Redraw the table: one row per replica, in configuration order."""
        table: DataTable[Text | str] = self.query_one("#replica-table", DataTable)
        table.clear()
        by_address = {s.address: s for s in statuses or ()}
        live = {s.replica: s for s in streams}
        for address in servers:
            status = by_address.get(address)
            stream = live.get(address)
            if status is None:
                state, took = Text("checking", style="dim"), ""
            elif status.reachable:
                state, took = Text("up", style="bold green"), latency(status)
            else:
                state, took = Text("down", style="bold red"), latency(status)
            if stream is not None and stream.connected:
                state.append(" · live", style="dim")  # its Subscribe stream is open: new mail comes from it
            table.add_row(Text(address, overflow="ellipsis", no_wrap=True), state, took)

    def show_outbox(self, owed: int | None) -> None:
        """How many deliveries the outbox still owes."""
        text = "outbox: checking" if owed is None else f"outbox: {owed} owed" if owed else "outbox: nothing owed"
        self.query_one("#outbox", Static).update(text)

    def show_in_view(self, text: str) -> None:
        """Who holds the highlighted message."""
        self.query_one("#in-view", Static).update(text)
