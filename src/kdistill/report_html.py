"""A report's markdown as a self-contained HTML page.

The markdown is converted by markdown-it-py with only what :func:`kdistill.report.render` writes
enabled (headings, paragraphs, bullet lists, tables, emphasis, code spans, backslash escapes and
images): raw HTML, links and entities stay text. Every plot is inlined as a data URI so the
page opens in a browser on its own (and can be mailed or attached as one file).

An image is shown only from a PNG file inside the run directory (any other URL or path stays
text), every text node and attribute is escaped, and the page carries a Content-Security-Policy
that allows no script at all.
"""
from __future__ import annotations

import base64
import re
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.rules_core import StateCore

HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1000px; margin: 2em auto; padding: 0 1em; }}
h1 {{ font-size: 1.6em; border-bottom: 2px solid #d62728; padding-bottom: .2em; }}
h2 {{ font-size: 1.2em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; margin: .8em 0; font-size: .9em; display: block;
        overflow-x: auto; }}
th, td {{ border: 1px solid #ddd; padding: .3em .6em; }}
td {{ white-space: nowrap; }}
th {{ background: #f4f4f4; }}
tr:nth-child(even) td {{ background: #fafafa; }}
code {{ background: #f2f2f2; padding: 0 .25em; border-radius: 3px; font-size: .9em; }}
figure {{ margin: 1em 0; }}
figure img {{ max-width: 100%; height: auto; }}
figcaption {{ color: #666; font-size: .85em; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
# The page runs no script and fetches nothing: inline CSS and inlined PNGs are all it uses.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
       "form-action 'none'")
# The markdown-it rules the report's markdown needs; nothing else is parsed.
RULES = ["heading", "list", "table", "emphasis", "backticks", "escape", "newline", "image"]
# An image source that may be shown: a relative path of plain names (no scheme, no leading /,
# no ..); anything else (javascript:, data:, http:, /etc/...) stays text.
_RELATIVE_PATH = re.compile(r"\w[\w.-]*(?:/\w[\w.-]*)*")
_PNG = b"\x89PNG\r\n\x1a\n"


def _image_src(src: str, base_dir: Path) -> str | None:
    """What an image's ``src`` attribute gets: a PNG inside ``base_dir`` as a data URI, a
    relative path to a file not there as itself; None (show the markdown as text) for any other
    URL or path and for a file that is not a PNG."""
    if not _RELATIVE_PATH.fullmatch(src):
        return None
    root = base_dir.resolve()
    path = (root / src).resolve()  # a link pointing out of the run directory is refused
    if not path.is_relative_to(root):
        return None
    if not path.exists():
        return src
    data = path.read_bytes() if path.is_file() else b""
    if not data.startswith(_PNG):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figures(base_dir: Path):
    """A core rule: a paragraph holding one image alone that may be shown becomes a figure."""
    def figures(state: StateCore) -> None:
        tokens = state.tokens
        for i in range(1, len(tokens) - 1):
            children = tokens[i].children or []
            if (tokens[i].type == "inline" and tokens[i - 1].type == "paragraph_open"
                    and len(children) == 1 and children[0].type == "image"
                    and _image_src(str(children[0].attrGet("src")), base_dir) is not None):
                tokens[i - 1].tag = tokens[i + 1].tag = "figure"
                children[0].meta["figure"] = True
    return figures


def _align_cells(state: StateCore) -> None:
    """Every table cell says its alignment: right as the delimiter row asks, else left."""
    for token in state.tokens:
        if token.type in ("th_open", "td_open") and not token.attrGet("style"):
            token.attrSet("style", "text-align:left")


def _markdown(base_dir: Path) -> MarkdownIt:
    """A converter for report markdown whose images are read from ``base_dir``."""
    md = MarkdownIt("zero", {"html": False, "xhtmlOut": False}).enable(RULES)
    md.normalizeLink = lambda url: url  # type: ignore[method-assign]  # checked as it is
    md.validateLink = (  # type: ignore[method-assign]
        lambda url: _image_src(url, base_dir) is not None)
    md.core.ruler.push("figures", _figures(base_dir))
    md.core.ruler.push("align_cells", _align_cells)

    def image(renderer, tokens, idx, options, env) -> str:
        token = tokens[idx]
        src = _image_src(str(token.attrGet("src") or ""), base_dir)
        if src is None:  # only an empty destination gets here: validateLink refused the rest
            return escapeHtml(f"![{token.content}]({token.attrGet('src') or ''})")
        alt = escapeHtml(renderer.renderInlineAsText(token.children or [], options, env))
        img = f'<img src="{escapeHtml(src)}" alt="{alt}">'
        return img + f"<figcaption>{alt}</figcaption>" if token.meta.get("figure") else img

    md.add_render_rule("image", image)
    md.add_render_rule("hardbreak", lambda *_: "\n")  # line breaks are white space
    return md


def markdown_to_html(markdown: str, base_dir: Path) -> str:
    """The HTML body of a report's markdown: headings, paragraphs, bullet lists, tables and
    images (read from ``base_dir`` and inlined as data URIs)."""
    return _markdown(base_dir).render(markdown).rstrip("\n")


def render_html(markdown: str, base_dir: Path) -> str:
    """A complete, self-contained HTML page for a report's markdown."""
    heading = next((line[2:] for line in markdown.splitlines() if line.startswith("# ")),
                   "kdistill report")
    inline = _markdown(base_dir).renderInline(heading.strip())
    title = re.sub(r"<[^>]*>", "", inline)  # escaped text, without its tags
    return HTML_TEMPLATE.format(csp=CSP, title=title, body=markdown_to_html(markdown, base_dir))
