"""A report as sections, rendered as Markdown and as one self-contained HTML page (images embedded)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from lenet.atomic import write_text

TITLE = "The LeNet-on-MNIST report, rerun"


@dataclass
class Section:
    title: str
    paragraphs: list[str]
    image: Path | None = None
    bullets: list[str] = field(default_factory=list)


def write_pages(out: Path, sections: list[Section], title: str = TITLE) -> Path:
    """report.md and report.html in `out`; returns the HTML page."""
    write_text(out / "report.md", render_markdown(title, sections, out))
    write_text(out / "report.html", render_html(title, sections))
    return out / "report.html"


def render_markdown(title: str, sections: list[Section], out: Path) -> str:
    parts = [f"# {title}\n"]
    for s in sections:
        parts.append(f"## {s.title}\n")
        parts += [p + "\n" for p in s.paragraphs]
        if s.bullets:
            parts.append("\n".join(f"- {b}" for b in s.bullets) + "\n")
        if s.image:
            parts.append(f"![{s.title}]({s.image.relative_to(out)})\n")
    return "\n".join(parts)


def render_html(title: str, sections: list[Section]) -> str:
    """One self-contained page: images are embedded as data URIs."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        for p in s.paragraphs:
            body.append(markdown_table_html(p) if p.startswith("|") else f"<p>{inline(p)}</p>")
        if s.bullets:
            body.append("<ul>" + "".join(f"<li>{inline(b)}</li>" for b in s.bullets) + "</ul>")
        if s.image:
            data = base64.b64encode(s.image.read_bytes()).decode()
            body.append(f'<img alt="{html.escape(s.title)}" src="data:image/png;base64,{data}">')
    style = (
        "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;line-height:1.5;"
        "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;"
        "padding:.3em .6em;text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        "code{background:#f3f3f3;padding:.1em .3em}strong.v{font-size:1.1em}"
    )
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def inline(text: str) -> str:
    """`code` and **bold** from the markdown paragraphs, everything else escaped."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong class='v'>\1</strong>", out)


def markdown_table_html(table: str) -> str:
    lines = [line for line in table.strip().splitlines() if not set(line) <= set("|-: ")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
