"""Checks on what a user hands in, run by the commands before any compute and any write.

A bad model, data file or path then fails in about a second with one line that names the
thing and the fix (exit 2), instead of after a download, a content hash or an hour of
calibration, and with nothing half-written. The checks themselves live beside the code that
reads each input (``models.check_model_dir``, ``data.load_texts``,
``evals.accuracy.check_eval_settings``); this module only decides what a recipe needs checked.
"""
from __future__ import annotations

import os
from pathlib import Path

from compress.core.errors import InputError
from compress.core.models import ModelRef, resolve_model
from compress.core.weights import check_model_dir


def check_inside_tree(path: str | Path, what: str) -> Path:
    """Refuse a path taken from a file (not typed on the command line) that would write outside
    the working tree: absolute, ``~``, or climbing out with ``..``.

    A recipe is data that may come from anyone; only the person running the command may send
    output elsewhere, by giving the path as a flag. The check is lexical: a link inside the tree
    that points elsewhere was put there by the user.

    Args:
        path: the path as written in the file.
        what: where it was written, e.g. ``"recipe export.to"``.

    Returns:
        The path, unchanged.

    Raises:
        InputError: the path leaves the working tree (exit 2).
    """
    text = str(path)
    parts = Path(os.path.normpath(text)).parts
    if Path(text).is_absolute() or text.startswith("~") or (parts and parts[0] == ".."):
        raise InputError(f"{what} '{text}' is outside the working tree ({Path.cwd()})",
                         hint="a recipe may only write below the directory it runs in; to write there on purpose, "
                              "give it on the command line with -o PATH")
    return Path(text)


def check_model(spec: str, *, revision: str | None = None, trust_remote_code: bool = False,
                allow_pickle: bool = False) -> ModelRef:
    """Resolve a model reference and refuse a directory that cannot be used (see
    ``models.check_model_dir``). A hub id is fetched here (without ``*.py`` unless trusted)."""
    ref = resolve_model(spec, revision, trust_remote_code=trust_remote_code)
    check_model_dir(ref.path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    return ref


def check_data(dataset: str, *, text_field: str = "text") -> None:
    """Read a local data file or a built-in set as the method will (hub datasets are left to
    the method: fetching one here would download it twice)."""
    from compress.core.data import is_local, load_texts

    if is_local(dataset):
        load_texts(dataset, text_field=text_field)


def check_recipe(recipe, *, evals: bool = False) -> None:
    """Everything a recipe reads, checked before its first stage: the base model, the data its
    method learns from, a given student model, and (``evals=True``) the eval tasks.

    Raises:
        UsageError: the first bad input, naming it and the fix (exit 2).
    """
    from compress.build.quantize import uses_calibration

    m = recipe.model
    check_model(m.id, revision=m.revision, trust_remote_code=m.trust_remote_code, allow_pickle=m.allow_pickle)
    method = recipe.method
    if uses_calibration(recipe):
        check_data(recipe.calibration.dataset, text_field=recipe.calibration.text_field)
    if method.kind == "distill":
        check_data(method.training.dataset, text_field=method.training.text_field)
        if method.student.model:
            check_model(method.student.model, trust_remote_code=m.trust_remote_code)
    if evals:
        from compress.measure.accuracy import check_eval_settings
        from compress.pipeline import needs

        if needs(recipe)[0]:
            check_eval_settings(recipe.evals)
        if recipe.evals.traffic is not None:
            check_traffic(recipe.evals.traffic, m.id)


def check_traffic(spec, model: str) -> None:
    """The traffic file: every request read and rendered for the model (a bad line or one too long for its
    context is named, exit 2), before any work."""
    from compress.core.models import load_tokenizer, resolve_model
    from compress.measure.engines.vllm import max_positions
    from compress.measure.traffic import load_requests, render

    requests = load_requests(spec.path, limit=spec.limit, sample=spec.sample, seed=spec.seed)
    path = resolve_model(model).path
    render(requests, load_tokenizer(path), path=spec.path, max_new_tokens=spec.max_new_tokens,
           context=max_positions(path))
