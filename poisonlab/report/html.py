"""Self-contained HTML: one page, inline CSS/JS, images as data URIs, and a CSP that forbids any fetch.

Everything that comes from data (manifests, class and file names, CSV cells) goes through `esc`: a run
folder is untrusted input like any other.
"""

import base64
import html
import json

# No network at all: only inline styles/scripts and data: images may load.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:18px 24px 60px}
h1{font-size:1.6em;margin:.4em 0}h2{font-size:1.25em;margin:1.6em 0 .5em;border-bottom:1px solid #d5d9e0}
h3{font-size:1.05em;margin:1.2em 0 .4em}
code,pre{font:13px/1.4 ui-monospace,Menlo,Consolas,monospace;background:#eceff3;border-radius:4px}
code{padding:1px 4px}pre{padding:8px 10px;overflow-x:auto;white-space:pre-wrap}
table{border-collapse:collapse;margin:.5em 0 1em;background:#fff;font-size:13.5px}
th,td{border:1px solid #d5d9e0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#e9edf3}table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:' \\25B2'}table.sortable th[aria-sort=descending]::after{content:' \\25BC'}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#176b2c;font-weight:600}.bad{color:#a4161a;font-weight:600}
.warn{background:#fff4d6;border:1px solid #e9c46a;border-radius:6px;padding:8px 12px;margin:10px 0}
.note{color:#5b6576;font-size:.92em}
figure{margin:10px 0 22px;background:#fff;border:1px solid #d5d9e0;border-radius:6px;padding:10px}
figure img{max-width:100%;height:auto}figcaption{font-size:.9em;color:#5b6576}
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}
.sample{background:#fff;border:1px solid #d5d9e0;border-radius:6px;padding:8px}
.sample .trio{display:flex;gap:4px}.sample .trio div{flex:1;text-align:center;font-size:12px}
.sample img{width:100%;image-rendering:pixelated;display:block}
.sample .name{font-size:12px;word-break:break-all;color:#5b6576}
details{margin:.4em 0 1em}summary{cursor:pointer;color:#2a4d8f}
.toc{margin:.2em 0 1em;font-size:.95em}.toc a{color:#2a4d8f}
"""

# Click a header to sort; numbers (ignoring %, ±-suffixes) sort numerically, the rest as text; blanks last.
SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,col){
    th.addEventListener('click',function(){
      var asc=th.getAttribute('aria-sort')!=='ascending';
      t.querySelectorAll('th').forEach(function(h){h.removeAttribute('aria-sort')});
      th.setAttribute('aria-sort',asc?'ascending':'descending');
      var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      function key(r){var s=(r.cells[col]||{}).textContent||'';s=s.trim();
        var n=parseFloat(s.replace(/[%\\s]/g,''));return {s:s,n:(s!==''&&/^[-+]?[0-9.]/.test(s)&&!isNaN(n))?n:null}}
      rows.sort(function(a,b){var x=key(a),y=key(b);
        if(x.s===''||y.s==='')return (x.s==='')-(y.s==='');
        var c=(x.n!==null&&y.n!==null)?x.n-y.n:x.s.localeCompare(y.s,undefined,{numeric:true});
        return asc?c:-c});
      rows.forEach(function(r){body.appendChild(r)});
    });
  });
});
"""


def esc(value) -> str:
    """Text for HTML content or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str, **attrs) -> str:
    extra = "".join(f' {k}="{esc(v)}"' for k, v in attrs.items())
    return f'<img src="{data_uri(png)}" alt="{esc(alt)}"{extra}>'


def _cell(v) -> str:
    if isinstance(v, float):
        return f'<td class="num">{v:.4g}</td>' if abs(v) < 1e-3 and v else f'<td class="num">{v:g}</td>'
    if isinstance(v, int) and not isinstance(v, bool):
        return f'<td class="num">{v}</td>'
    return f"<td>{esc(v)}</td>"


def table(header, rows, sortable=True, caption=None) -> str:
    """rows: lists of plain values (escaped here) aligned with header."""
    cls = ' class="sortable"' if sortable else ""
    out = [f"<table{cls}>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>" + "".join(_cell(v) for v in r) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def kv_table(pairs) -> str:
    """Two-column table of key / value; nested values are shown as compact JSON."""
    rows = []
    for k, v in pairs:
        if isinstance(v, (dict, list)):
            v = json.dumps(v, default=str, ensure_ascii=False)
        rows.append([k, "" if v is None else str(v)])
    return table(["field", "value"], rows, sortable=False)


def shown_path(path) -> str:
    """A path as a command line should show it: relative to the working directory when inside it."""
    from pathlib import Path
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def command(cmd: str) -> str:
    return f"<p class=\"note\">Made by: <code>{esc(cmd)}</code></p>"


def with_contents(body: str) -> str:
    """Give every <h2> an id and put a list of links to them after the page's <h1>."""
    import re
    links = []

    def anchor(m):
        links.append((f"s{len(links) + 1}", m.group(1)))
        return f'<h2 id="{links[-1][0]}">{m.group(1)}</h2>'
    body = re.sub(r"<h2>(.*?)</h2>", anchor, body)
    if len(links) < 3:
        return body
    nav = '<nav class="toc">' + " · ".join(f'<a href="#{i}">{t}</a>' for i, t in links) + "</nav>"
    return re.sub(r"(</h1>)", lambda m: m.group(1) + nav, body, count=1)


def page(title: str, body: str) -> str:
    body = with_contents(body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main><script>{SORT_JS}</script></body></html>\n")
