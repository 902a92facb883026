"""The kernel's command line: how it splits into arguments, and how GRUB must be given one.

The kernel splits at white space outside double quotes, and a double quote only groups:
`opt="a b"` and `"opt=a b"` are both the argument `opt` with the value `a b`. GRUB 2.06 reads
grub.cfg as a script (`;`, `$`, quotes and white space mean something there), then joins its
arguments again for the kernel, quoting one that holds a space and escaping `\\`, `'` and `"` with a
backslash, which the kernel does not undo. So an argument goes into grub.cfg unquoted for the kernel
and single-quoted for GRUB, and a backslash or a single quote cannot reach the kernel through GRUB
at all: such arguments are refused where they enter (kargs.d, config.toml).
"""

from __future__ import annotations

import re

from imagemode.errors import ImagemodeError


class CmdlineError(ImagemodeError):
    pass


def split(text: str) -> list[str]:
    """Arguments as the kernel splits them: at white space outside double quotes."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for c in text:
        if c == '"':
            quoted = not quoted
        if c.isspace() and not quoted:
            if cur:
                out.append("".join(cur))
                cur = []
            continue
        cur.append(c)
    if cur:
        out.append("".join(cur))
    return out


def problem(arg: str) -> str | None:
    """Why `arg` cannot be one kernel argument passed through GRUB, or None when it can."""
    if not arg:
        return "an empty argument"
    if any(ord(c) < 0x20 or c == "\x7f" for c in arg):
        return "a control character"
    if "\\" in arg or "'" in arg:
        return "a backslash or a single quote, which GRUB 2.06 passes to the kernel escaped"
    if arg.count('"') % 2:
        return "a double quote that does not close"
    if len(split(arg)) != 1:
        return "white space outside double quotes"
    return None


def check(args: list[str], where: str) -> list[str]:
    for a in args:
        why = problem(a)
        if why is not None:
            raise CmdlineError(f"{where}: {a!r} is not one kernel argument ({why})")
    return args


PLAIN = re.compile(r"[A-Za-z0-9._,:/=+@%-]+\Z")


def for_grub(arg: str) -> str:
    """`arg` as one word of a grub.cfg `linux` line: its kernel quotes dropped (GRUB adds its own
    when a space needs them), and single-quoted unless it is plain, so that GRUB reads `;`, `$`,
    `#` and spaces literally."""
    text = arg.replace('"', "")
    return text if PLAIN.match(text) else f"'{text}'"
