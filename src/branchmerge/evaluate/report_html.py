"""The report as a list of blocks, rendered to Markdown and to one self-contained HTML page.

Both renderings come from the same blocks, so the two files never disagree. The HTML page embeds its figures as
base64 `data:` URIs and its style inline: it opens offline, attached to an e-mail, with no other file beside it.
Inline markup in text and cells is limited to `code` and **bold**.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    file: str  # a PNG in the report folder
    alt: str


@dataclass
class Bullets:
    items: list[str] = field(default_factory=list)


Block = Heading | Text | Table | Figure | Bullets


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Text):
            lines += [b.text, ""]
        elif isinstance(b, Table):
            lines.append("| " + " | ".join(b.header) + " |")
            lines.append("|---" * len(b.header) + "|")
            lines += ["| " + " | ".join(r) + " |" for r in b.rows]
            lines.append("")
        elif isinstance(b, Figure):
            lines += [f"![{b.alt}]({b.file})", ""]
        else:
            lines += [f"- {item}" for item in b.items] + [""]
    return "\n".join(lines).rstrip() + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 0.2rem; }
img { max-width: 100%; border: 1px solid #eee; }
.warn { color: #9a5b00; }
"""


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return out.replace("⚠", '<span class="warn">⚠</span>')


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html(blocks: list[Block], title: str, folder: Path) -> str:
    """One page with everything inline; figures are read from `folder`."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
    ]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            parts.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Figure):
            parts.append(f'<p><img src="{_data_uri(folder / b.file)}" alt="{html.escape(b.alt)}"></p>')
        else:
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
