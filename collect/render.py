"""Model text → safe HTML: markdown with highlighted code, every raw HTML tag in the text escaped, never run.

markdown-it with `html: False` escapes `<script>`, `<img onerror=…>` and friends into visible text, and its
link validator refuses `javascript:`/`vbscript:`/`data:` URLs. Images are turned off so an answer cannot make
the annotator's browser fetch anything.
"""

from __future__ import annotations

import html

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

_FORMATTER = HtmlFormatter(noclasses=True, nowrap=True, style="default")


def _code(code: str, lang: str, _attrs: str) -> str:
    try:
        lexer = get_lexer_by_name(lang.strip()) if lang.strip() else None
    except ClassNotFound:
        lexer = None
    body = highlight(code, lexer, _FORMATTER) if lexer else html.escape(code)
    return f'<pre class="ak-code"><code>{body}</code></pre>'


_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False, "highlight": _code})
_MD.disable("image")


def markdown(text: str) -> str:
    """Render one model answer (or prompt turn) as inert HTML."""
    return _MD.render(text or "")


def conversation(messages: list[dict]) -> str:
    """A multi-turn prompt: one block per turn with its role, each turn rendered like an answer."""
    parts = []
    for m in messages:
        role = html.escape(str(m.get("role", "?")))
        parts.append(f'<div class="ak-turn ak-{role}"><div class="ak-role">{role}</div>'
                     f'{markdown(str(m.get("content", "")))}</div>')
    return "\n".join(parts)
