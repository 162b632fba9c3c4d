"""Reports, one module per output kind: terminal tables (``tables``), Markdown sections (``markdown``),
the model card an export carries (``card``), the run summary and JUnit for CI (``summary``), and the
table and Pareto plot over every run (``runs``).
"""
from compress.ship.report.card import (
    FORMAT_TAGS,
    card_data,
    how_made,
    local_base,
    model_card,
    recipe_excerpt,
    serve_flags,
)
from compress.ship.report.markdown import (
    SERVE,
    TRANSFORMERS_NEEDS,
    WIDE_SPREAD,
    accuracy_markdown,
    checks_markdown,
    serve_markdown,
    speed_heading,
    speed_markdown,
    spread_warning,
)
from compress.ship.report.runs import (
    collect_runs,
    pareto,
    pareto_plot,
    runs_table,
)
from compress.ship.report.summary import (
    junit_document,
    junit_xml,
    run_summary_markdown,
)
from compress.ship.report.tables import (
    accuracy_table,
    bench_table,
    compare_tables,
    draft_table,
    fmt_rate,
    fmt_value,
    identical_outputs,
    runtime_line,
    served_draft_table,
)

__all__ = [
    "accuracy_table", "bench_table", "compare_tables", "draft_table", "fmt_rate", "fmt_value",
    "identical_outputs", "runtime_line", "served_draft_table", "SERVE", "TRANSFORMERS_NEEDS",
    "WIDE_SPREAD", "accuracy_markdown", "checks_markdown", "serve_markdown", "speed_heading",
    "speed_markdown", "spread_warning", "FORMAT_TAGS", "card_data", "how_made", "local_base",
    "model_card", "recipe_excerpt", "serve_flags", "junit_document", "junit_xml", "run_summary_markdown",
    "collect_runs", "pareto", "pareto_plot", "runs_table",
]
