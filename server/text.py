"""Text that came from an agent, made safe before it reaches a terminal, a TSV file or a git commit message.

An agent writes the descriptions and hypotheses that `autoresearch results`, `results.tsv` and the run branch's commit
subjects replay to a person. Terminals obey control characters: `ESC[2J` clears the screen, `ESC]0;...BEL` retitles
the window, cursor movement overwrites earlier rows, and Unicode bidirectional overrides make text read differently
from what it is. A NUL byte cannot pass through a subprocess argument or a C string at all.

The policy has two halves:
- At the door (`check_agent_text`), agent text is refused when it holds any such character: every C0 control except
  tab, line feed and carriage return (which the engine folds into spaces with all other whitespace), DEL, every C1
  control (U+0080-U+009F, which some terminals read as ESC sequences) and the bidirectional controls. Refusing, not
  silently escaping, keeps the ledger equal to what the agent meant and tells the agent exactly what was wrong; the
  refused call is audited with what was sent (the audit log is JSON, which escapes control characters).
- On the way out (`for_terminal`, `for_tsv`), anything already stored (a ledger written before this policy, a value
  that reached storage another way) is shown with visible escapes such as `\\x1b`, never raw.
"""

from __future__ import annotations

import re
import unicodedata

ALLOWED_WHITESPACE = "\t\n\r"
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"

_UNSAFE_CLASS = "\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f" + "".join(f"\\u{ord(c):04x}" for c in BIDI_CONTROLS)
UNSAFE = re.compile(f"[{_UNSAFE_CLASS}]")
# The same rule as a JSON Schema `pattern` (ECMA-262 syntax), published in the tools' input schemas.
SCHEMA_PATTERN = "^[^" + "\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f" + "".join(
    f"\\u{ord(c):04x}" for c in BIDI_CONTROLS) + "]*$"

_NAMES = {0x00: "NUL", 0x07: "BEL", 0x08: "BS", 0x0B: "VT", 0x0C: "FF", 0x1B: "ESC", 0x7F: "DEL", 0x9B: "CSI",
          0x9D: "OSC"}


class UnsafeText(ValueError):
    """Agent text holds a character that could rewrite a terminal or break a file; the message names it."""


def describe_char(ch: str) -> str:
    """`U+001B (ESC)`: the code point and a short name a person recognises."""
    code = ord(ch)
    name = _NAMES.get(code) or unicodedata.name(ch, "") or ("control" if unicodedata.category(ch) == "Cc" else "")
    return f"U+{code:04X} ({name})" if name else f"U+{code:04X}"


def first_unsafe(text: str) -> tuple[int, str] | None:
    """(index, character) of the first character `check_agent_text` refuses, or None when the text is safe."""
    match = UNSAFE.search(text)
    return (match.start(), match.group()) if match else None


def check_agent_text(text: str, name: str) -> str:
    """Return `text` unchanged when it is safe to store and replay; else raise `UnsafeText` naming the character."""
    found = first_unsafe(text)
    if found is None:
        return text
    index, ch = found
    count = len(UNSAFE.findall(text))
    where = f"at character {index + 1}" + (f" (and {count - 1} more)" if count > 1 else "")
    context = for_terminal(text[max(0, index - 20):index + 20])
    if ch == "\x00":
        what = "a NUL byte, which no file name, commit message or terminal line can carry"
    elif ch in BIDI_CONTROLS:
        what = "a bidirectional-text control, which makes text display differently from what it says"
    else:
        what = "a control character, which a terminal would obey instead of showing"
    raise UnsafeText(f"{name} contains {describe_char(ch)} {where} (near \"{context}\"), {what}. "
                     f"Write {name} as plain text without control characters and call again.")


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def for_terminal(text: str) -> str:
    """One line safe to print: unsafe characters and line breaks become visible escapes (`\\x1b`, `\\n`)."""
    text = UNSAFE.sub(lambda m: _escape(m.group()), text)
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")


def for_tsv(text: str) -> str:
    """One TSV field: like `for_terminal`, with tabs escaped too so the columns stay where they are."""
    return for_terminal(text.replace("\t", "\\t"))
