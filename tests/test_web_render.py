"""Rendering sections: any shape of value, every text escaped."""

from __future__ import annotations

from profilestore.web.render import ENVIRONMENT, MAX_ROWS, render_value


def test_every_text_and_key_is_escaped_at_any_depth() -> None:
    html = render_value(
        {"<k>": [{"title": "<script>x</script>", "n": 1}], "deep": {"a": ["<i>", None, True]}}
    )
    assert "<script>" not in html and "<i>" not in html and "<k>" not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "&lt;k&gt;" in html
    assert "<th>title</th>" in html and "yes" in html


def test_long_lists_show_their_first_rows_and_count_the_rest() -> None:
    html = render_value([{"i": i} for i in range(MAX_ROWS + 7)])
    assert html.count("<tr>") == MAX_ROWS + 1  # with the header row
    assert "and 7 more" in html


def test_templates_autoescape() -> None:
    assert ENVIRONMENT.from_string("{{ x }}").render(x="<b>") == "&lt;b&gt;"
