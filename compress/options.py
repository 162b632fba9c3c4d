"""Options shared by several commands, as ``Annotated`` aliases."""
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
RunsDir = Annotated[
    Path, typer.Option("--runs-dir", envvar="COMPRESS_RUNS_DIR", help="Where runs are written.")
]
CacheDir = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", envvar="COMPRESS_CACHE_DIR",
                 help="Report cache (default: <runs-dir>/.cache)."),
]
Rerun = Annotated[bool, typer.Option("--rerun", help="Ignore cached results and measure again.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
RecipeFile = Annotated[Optional[Path], typer.Option("--recipe", "-r", help="Take settings from this recipe.")]
TensorParallel = Annotated[Optional[int], typer.Option(
    "--tensor-parallel", min=1, help="vllm: GPUs each copy of the model is split over (--tensor-parallel-size).")]
DataParallel = Annotated[Optional[int], typer.Option(
    "--data-parallel", min=1, help="vllm: copies of the model serving side by side (--data-parallel-size).")]
SignKey = Annotated[
    Optional[Path],
    typer.Option("--sign", metavar="KEY",
                 help="Sign the export with this Ed25519 private key (compress keygen): writes "
                      "provenance.intoto.json. Default: the recipe's export.sign_key, then $COMPRESS_SIGN_KEY "
                      "(a path or the key text)."),
]
