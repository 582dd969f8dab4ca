"""Text from the network shown to a person: data, never terminal commands.

A sender controls every character of a body, an address's display form and a
replica's error detail. Printed raw, ESC sequences in them could recolour,
retitle or rewrite the reader's terminal; so everything shown goes through
`escape_control` first (the CLI, `messenger watch` and the terminal app alike).
"""

from __future__ import annotations

import unicodedata

_KEPT = frozenset("\n\t")


def escape_control(text: str, *, keep_newlines: bool = True) -> str:
    """`text` with every control or format character shown as an escape (`\\x1b`, `\\u202e`).

    Newlines (and tabs) are kept when `keep_newlines`, so multi-line bodies stay
    readable; everything else in Unicode categories Cc, Cf, Cs, Co and Cn is escaped.
    """
    out: list[str] = []
    for ch in text:
        if keep_newlines and ch in _KEPT:
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)
