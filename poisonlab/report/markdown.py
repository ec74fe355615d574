"""The small Markdown subset that bench writes (headings, paragraphs, pipe tables, `code`, **bold**,
*italic*) as HTML. Text is escaped first, so markup in data cannot become HTML."""

import re

from .html import esc, table


def _inline(text: str) -> str:
    s = esc(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"(?<![*\w])\*([^*]+)\*(?!\w)", r"<em>\1</em>", s)


def _row(line: str):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_html(text: str) -> str:
    out, para, lines = [], [], text.splitlines()

    def flush():
        if para:
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            flush()
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [_row(b) for b in block if not re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*", b.strip())]
            if rows:
                out.append(table(rows[0], rows[1:]))
            continue
        m = re.match(r"(#{1,4})\s+(.*)", line)
        if m:
            flush()
            level = min(len(m.group(1)) + 1, 4)  # the page's own title is the only <h1>
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
        elif not line.strip():
            flush()
        else:
            para.append(line.strip())
        i += 1
    flush()
    return "\n".join(out)
