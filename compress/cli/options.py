"""Options shared by several commands, as ``Annotated`` aliases: one spelling per meaning.

``-o/--output`` is whatever a command writes, ``--json`` prints the result as JSON on stdout,
``--set`` overrides a recipe value wherever a recipe is read, ``-q``/``-v`` set how much is said.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

JsonOut = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
SetOverrides = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", metavar="KEY=VALUE",
                 help="Override a recipe value, e.g. --set method.group_size=64 (repeatable)."),
]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")]
Rerun = Annotated[bool, typer.Option("--rerun", help="Ignore cached results and measure again.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
RecipeFile = Annotated[Optional[Path], typer.Option("--recipe", "-r", metavar="FILE",
                                                    help="Take settings from this recipe.")]
ArtifactOut = Annotated[Optional[Path], typer.Option(
    "--output", "-o", metavar="DIR", help="Artifact directory.  \\[default: runs/NAME/KEY/model]", show_default=False)]
ReportOut = Annotated[Optional[Path], typer.Option(
    "--output", "-o", metavar="FILE", help="Also write the report as JSON to this file.")]
ModelDtype = Annotated[Optional[str], typer.Option(
    "--dtype", help="float32, bfloat16, float16 or auto (the checkpoint's own).  "
    "\\[default: the recipe's model.dtype, else auto]")]
TensorParallel = Annotated[Optional[int], typer.Option(
    "--tensor-parallel", min=1, help="vllm: GPUs each copy of the model is split over (--tensor-parallel-size).  "
    "\\[default: 1]")]
DataParallel = Annotated[Optional[int], typer.Option(
    "--data-parallel", min=1, help="vllm: copies of the model serving side by side (--data-parallel-size).  "
    "\\[default: 1]")]
StartTimeout = Annotated[Optional[float], typer.Option(
    "--start-timeout", min=1, metavar="SECONDS", help="vllm: the most a server's start may take while it makes "
    "progress (bench.start_timeout_s).  \\[default: $COMPRESS_ENGINE_START_TIMEOUT, else 3600]")]
SignKey = Annotated[
    Optional[Path],
    typer.Option("--sign", metavar="KEY",
                 help="Sign the export with this private key (compress keygen): writes provenance.intoto.json, "
                      "and with an EC key also model.sig (OpenSSF model_signing).  \\[default: the recipe's "
                      "export.sign_key, then $COMPRESS_SIGN_KEY "
                      "(a path or the key text)]"),
]
Traffic = Annotated[Optional[Path], typer.Option(
    "--traffic", metavar="FILE", help="A JSONL file of your own requests (prompt, chat messages or ShareGPT "
    "conversations): both models answer them (evals.traffic.path; its other settings from the recipe).  "
    "\\[default: the recipe's evals.traffic, else none]")]
WorkloadFile = Annotated[Optional[Path], typer.Option(
    "--workload", metavar="FILE", help="Served benchmarks: send these requests (a JSONL traffic file: prompt, chat "
    "messages or ShareGPT conversations, each with an optional max_tokens) instead of random prompts "
    "(bench.workload.path).  \\[default: the recipe's bench.workload, else random prompts of --prompt-tokens]")]
Arrival = Annotated[Optional[str], typer.Option(
    "--arrival", metavar="PROCESS", help="closed (a fixed number in flight), or poisson / constant: requests arrive "
    "on their own schedule at each of --rates (an open loop).  \\[default: the recipe's bench.arrival, else closed]")]
Rates = Annotated[Optional[str], typer.Option(
    "--rates", metavar="R1,R2", help="Open loop: comma-separated request rates per second (bench.rates).  "
    "\\[default: the recipe's bench.rates, else none]")]
GoodputTarget = Annotated[Optional[float], typer.Option(
    "--goodput", metavar="SHARE", min=0.01, max=1.0, help="Open loop: search the highest rate at which this share "
    "of requests meets the SLO, e.g. 0.95 (bench.goodput.attainment; needs --slo-*).  \\[default: the recipe's "
    "bench.goodput, else no search]")]
SloTtft = Annotated[Optional[float], typer.Option(
    "--slo-ttft-ms", metavar="MS", min=0.001, help="SLO: each request's time to first token (bench.slo.ttft_ms).")]
SloTpot = Annotated[Optional[float], typer.Option(
    "--slo-tpot-ms", metavar="MS", min=0.001, help="SLO: each request's mean time per output token "
    "(bench.slo.tpot_ms).")]
SloE2e = Annotated[Optional[float], typer.Option(
    "--slo-e2e-ms", metavar="MS", min=0.001, help="SLO: each request's end-to-end latency (bench.slo.e2e_ms).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only results and errors.")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Also show the back ends' output (warnings, logs, progress bars) and compress's "
    "details on stderr; without it they go to a log file (also: COMPRESS_BACKEND_LOG=1).")]

# Older spellings, still accepted on the command line (rewritten before parsing).
RENAMED = {"--out": "--output", "--to": "--output", "--export-to": "--output"}
