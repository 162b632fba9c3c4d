"""What CI reads from a run: the Markdown summary and JUnit XML (one writer, shared with search)."""
from __future__ import annotations

from typing import Any

from compress.core.console import fmt_bytes
from compress.ship.report.markdown import accuracy_markdown, checks_markdown, speed_heading, speed_markdown


def run_summary_markdown(result: Any) -> str:
    """The `--summary` of `compress run` (also appended to $GITHUB_STEP_SUMMARY)."""
    gate = result.gate
    icon = {"PASS": "✅", "FAIL": "❌", "INCONCLUSIVE": "⚠️"}[gate.verdict]
    m = result.manifest
    lines = [
        f"## {icon} {result.recipe.name}: {gate.verdict}",
        "",
        f"{m['method']['scheme']} of `{m['base_model']['id']}` ({m['method']['format']}); "
        f"weights {fmt_bytes(m['size']['weights_bytes'])}, {m['size']['ratio']:.2f}x the base."
        if m["size"].get("ratio") else "",
        "",
        checks_markdown(gate),
    ]
    acc = (result.reports.get(("baseline", "accuracy")), result.reports.get(("candidate", "accuracy")))
    if all(acc):
        lines += ["", "### Accuracy", "", accuracy_markdown(*acc)]
    speed = result.reports.get(("both", "speed"))
    if speed is not None:
        lines += ["", "### Speed, memory, cost", "", f"Measured with {speed_heading(speed)}.", "",
                  speed_markdown(speed, gate.confidence)]
    lines += ["", f"Exported to `{result.exported_to}`." if result.exported_to else
              "Nothing exported (only a PASS can be)." , ""]
    return "\n".join(lines)


def junit_document(suite: str, classname: str, seconds: float, cases: list[dict[str, Any]],
                   title: str = "compress") -> str:
    """A JUnit XML document (named ``title``) of one suite. Each case: ``name``, optional ``time`` (s), ``failure`` (a
    ``(type, message)`` pair, or None for a pass) and ``out`` (its system-out text)."""
    from xml.sax.saxutils import escape, quoteattr

    failures = sum(c.get("failure") is not None for c in cases)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuites name={quoteattr(title)} tests="{len(cases)}" failures="{failures}">',
           f'  <testsuite name={quoteattr(suite)} tests="{len(cases)}" failures="{failures}" time="{seconds:.2f}">']
    for c in cases:
        time = f' time="{c["time"]:.2f}"' if c.get("time") is not None else ""
        out.append(f'    <testcase classname={quoteattr(classname)} name={quoteattr(c["name"])}{time}>')
        if c.get("failure") is not None:
            kind, message = c["failure"]
            out.append(f'      <failure type={quoteattr(kind)} message={quoteattr(message)}/>')
        if c.get("out"):
            out.append(f'      <system-out>{escape(c["out"])}</system-out>')
        out.append("    </testcase>")
    out += ["  </testsuite>", "</testsuites>", ""]
    return "\n".join(out)


def junit_xml(result: Any) -> str:
    """One JUnit test case per gate check; FAIL and INCONCLUSIVE are failures of their case."""
    cases = [{"name": f"{c.metric} ({c.threshold})", "out": c.note,
              "failure": None if c.verdict == "PASS" else (c.verdict, c.note or c.verdict)}
             for c in result.gate.checks]
    return junit_document(result.recipe.name, "gate." + result.recipe.name, result.seconds, cases)


