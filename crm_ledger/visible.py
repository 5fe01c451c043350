"""Text from the data shown as it is: no character in it may act on the screen showing it.

Ids, names and notes come from imports and clients. Shown raw, a control character is
obeyed by a terminal (an escape sequence recolours it, retitles the window, moves the
cursor), and a bidirectional formatting character (U+202E RIGHT-TO-LEFT OVERRIDE and its
kin) reorders what follows it on a terminal or a web page, so an id can read as another
one. Both are shown as Python's escapes (`\\x1b`, `\\u202e`); tabs and line ends stay.
"""

from __future__ import annotations

import re

#: C0 controls but tab and line feed, DEL and the C1 controls; the bidirectional embeddings,
#: overrides and isolates. (Not the direction marks U+200E, U+200F and U+061C: Hebrew and
#: Arabic text holds them, and they reorder nothing beyond a neighbouring character.)
_ACTING = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` with every character that would act on a screen as its visible escape."""
    return _ACTING.sub(lambda m: repr(m.group())[1:-1], text)
