"""Model text is markdown with highlighted code and never raw HTML."""

from __future__ import annotations

from collect.render import conversation, markdown


def test_raw_html_is_escaped_into_text():
    out = markdown('<script>alert(1)</script> and <img src=x onerror="alert(2)"> <b>bold?</b>')
    assert "<script" not in out and "<img" not in out and "<b>" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out and "&lt;img src=x onerror=" in out


def test_markdown_and_code_highlighting():
    out = markdown("**bold** and `x<y`\n\n```python\nprint('<b>')\n```\n")
    assert "<strong>bold</strong>" in out and "<code>x&lt;y</code>" in out
    assert '<pre class="ak-code"><code><span style=' in out  # pygments, inline styles
    assert "&lt;b&gt;" in out and "<b>" not in out


def test_dangerous_links_and_images_are_not_rendered():
    out = markdown("[click](javascript:alert(1)) ![pixel](http://example.com/t.png) [ok](https://example.com)")
    assert "javascript:" not in out.replace("[click](javascript:alert(1))", "") and 'href="javascript' not in out
    assert "<img" not in out and '<a href="https://example.com">ok</a>' in out


def test_conversation_shows_every_turn_with_its_role():
    out = conversation([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"}, {"role": "user<script>", "content": "again"}])
    assert out.count('class="ak-turn') == 4 and "be brief" in out and "again" in out
    assert "user&lt;script&gt;" in out and "<script" not in out
