"""Read-only HTML pages for the embedded default (no Grafana): a run list and one page per run.

`pages.router` serves them; `plots` draws server-side SVG with matplotlib; `data` holds the
read-only SQL the pages need beyond the API's own query functions; the HTML is in `html/` (Jinja2
templates, autoescaped), rendered by `templates`.
"""
