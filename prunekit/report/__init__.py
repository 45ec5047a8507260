"""``report.html`` of a run that deployed a mixture, rebuilt from the run directory alone.

Core sections (HTML ids): ``summary``, ``metrics`` (teacher vs pruned, with bootstrap intervals where
the evaluation kept per-image scores), ``experts`` (budget and share of prompts, per-expert metrics),
``routing`` (evaluation prompts of each category routed to each expert), ``architecture`` (retained
MACs of every U-Net block of every expert, the APTP paper's Fig. 9/10), ``words`` (most frequent words
routed to each expert, Tables 2/4), ``samples`` (teacher and expert images of the same prompt and
seed) and ``complexity`` (do harder prompts go to bigger experts?). Plugins add sections through the
``prunekit_report_sections`` hook (:class:`ReportSection`; APTP's training curves come that way). The
page is rendered from Jinja2 templates (``templates/``, autoescaped) and titled with the recipe's
name; every chart is drawn with matplotlib (:mod:`prunekit.plots`), embedded as a base64 PNG and
written to ``report/`` as PNG and SVG; the numbers behind the core sections go to
``report/report.json``. See docs/report.md.

Modules: :mod:`~prunekit.report.data` (what is shown, as plain data), :mod:`~prunekit.report.stats`
(bootstrap intervals, the routing table), :mod:`~prunekit.report.architecture` (the retained-MAC map),
:mod:`~prunekit.report.charts`, :mod:`~prunekit.report.sections` (the hook's section type and the page
order), :mod:`~prunekit.report.page` (the templates' context, HTML), :mod:`~prunekit.report.build`
and :mod:`~prunekit.report.command` (``prunekit report``).
"""

from __future__ import annotations

from prunekit.report.architecture import block_label, block_macs, retained_mac_map
from prunekit.report.build import REPORT_DIR, REPORT_FILE, build_report
from prunekit.report.charts import chart_builders, charts
from prunekit.report.command import add_report_arguments, load_function, main_report
from prunekit.report.data import (
    COMPLEXITY_FILE,
    STOP_WORDS,
    collect,
    prompt_complexity,
    record_complexity,
    top_words,
    words_of,
)
from prunekit.report.page import Picture, render_html, split_metrics
from prunekit.report.sections import SECTIONS, ReportSection, series
from prunekit.report.stats import bootstrap_ci, metric_intervals, routing_table

__all__ = [
    "COMPLEXITY_FILE", "REPORT_DIR", "REPORT_FILE", "SECTIONS", "STOP_WORDS", "Picture", "ReportSection",
    "add_report_arguments", "block_label", "block_macs", "bootstrap_ci", "build_report", "chart_builders", "charts",
    "collect", "load_function", "main_report", "metric_intervals", "prompt_complexity", "record_complexity",
    "render_html", "retained_mac_map", "routing_table", "series", "split_metrics", "top_words", "words_of",
]
