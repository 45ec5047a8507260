"""``report.html`` of a run that deployed a mixture, rebuilt from the run directory alone.

Core sections (HTML ids): ``summary``, ``metrics`` (teacher vs pruned), ``experts`` (budget and share
of prompts), ``architecture`` (retained MACs of every U-Net block of every expert, the APTP paper's
Fig. 9/10), ``words`` (most frequent words routed to each expert, Tables 2/4), ``samples`` (a grid per
expert) and ``complexity`` (do harder prompts go to bigger experts?). Plugins add sections through the
``prunekit_report_sections`` hook (:class:`ReportSection`; APTP's training curves come that way).
Every image is embedded as a base64 PNG and also written to ``report/``; the numbers behind the core
charts go to ``report/report.json``.

Modules: :mod:`~prunekit.report.data` (what is shown, as plain data), :mod:`~prunekit.report.architecture`
(the retained-MAC map), :mod:`~prunekit.report.charts`, :mod:`~prunekit.report.sections` (the hook's
section type and the page order), :mod:`~prunekit.report.page` (HTML), :mod:`~prunekit.report.build`
and :mod:`~prunekit.report.command` (``prunekit report``).
"""

from __future__ import annotations

from prunekit.report.architecture import block_label, block_macs, retained_mac_map
from prunekit.report.build import REPORT_DIR, REPORT_FILE, build_report
from prunekit.report.charts import charts
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
from prunekit.report.page import render_html, split_metrics
from prunekit.report.sections import SECTIONS, ReportSection, series

__all__ = [
    "COMPLEXITY_FILE", "REPORT_DIR", "REPORT_FILE", "SECTIONS", "STOP_WORDS", "ReportSection",
    "add_report_arguments", "block_label", "block_macs", "build_report", "charts", "collect", "load_function",
    "main_report", "prompt_complexity", "record_complexity", "render_html", "retained_mac_map", "series",
    "split_metrics", "top_words", "words_of",
]
