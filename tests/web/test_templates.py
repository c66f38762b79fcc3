"""The page templates: everything printed is escaped (the standard library's entities), macros and
plots are markup, and a section that cannot be drawn becomes a sentence instead of a 500."""

from __future__ import annotations

import html

from markupsafe import Markup

from service.web.pages import _drawn
from service.web.templates import ENVIRONMENT

HOSTILE = "<img src=x onerror=alert(1)>&\"'"


def test_printed_values_are_escaped_and_markup_is_not() -> None:
    template = ENVIRONMENT.from_string("{{ text }}|{{ svg }}|{{ num(3.5, 'm') }}")
    macros = ENVIRONMENT.get_template("macros.html").module
    out = template.render(text=HOSTILE, svg=Markup("<svg></svg>"), num=macros.num)
    assert out.startswith(html.escape(HOSTILE) + "|<svg></svg>|")
    assert '<span class="num" data-metric="m" data-value="3.5">3.5</span>' in out


def test_findings_are_sorted_by_severity_and_their_messages_escaped() -> None:
    macros = ENVIRONMENT.get_template("macros.html").module
    out = str(macros.findings([{"severity": "info", "message": "later", "code": "a"},
                               {"severity": "critical", "message": HOSTILE, "code": "b", "step": 1200}]))
    assert out.index(html.escape(HOSTILE)) < out.index("later")
    assert "step 1,200" in out and HOSTILE not in out


def test_a_section_that_cannot_be_drawn_becomes_a_sentence_naming_it() -> None:
    def broken() -> dict:
        raise KeyError(HOSTILE)

    out = str(_drawn("cards", "run/cards.html", broken))
    assert out.startswith("<p class='empty' data-failed='cards'>The cards section could not be shown")
    assert html.escape(f"KeyError: {HOSTILE!r}") in out and HOSTILE not in out
