"""The exit status of every `messenger` command, in one place (scripts branch on them)."""

from __future__ import annotations

OK = 0
FAILED = 1  # replicas unreachable or refusing, deliveries still owed, status with no replica up
BAD_INPUT = 2  # bad flags, addresses, bodies, files or config: nothing was sent
QUEUED = 3  # fewer than W replicas confirmed; the rest is in the outbox and delivered later
LOCAL_DATA = 4  # --home, or the local inbox or outbox file, cannot be used
INTERRUPTED = 130

HELP = (
    "\b\nExit status:\n"
    f"  {OK}    success\n"
    f"  {FAILED}    failed: replicas unreachable or refusing (no quorum, nothing queued), deliveries still owed\n"
    f"  {BAD_INPUT}    bad input: flags, addresses, bodies, files or config; nothing was sent\n"
    f"  {QUEUED}    queued: stored on fewer than the write quorum; the outbox delivers the rest later,\n"
    "       and resending with the same --key is safe\n"
    f"  {LOCAL_DATA}    local data unusable: --home, or the inbox or outbox file in it\n"
    f"  {INTERRUPTED}  interrupted (Ctrl-C)"
)
