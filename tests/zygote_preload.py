"""Imported once by the tests' fork server (tests/zygote.py, which sets what compress sets before these imports):
everything a compress command loads before it starts working. No torch operation runs here, so forking afterwards
is safe."""
import compress.cli  # noqa: F401
import compress.pipeline  # noqa: F401
import llmcompressor  # noqa: F401
import lm_eval  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401
from compress.measure.tasks import bundled_task_names, task_manager

# lm-eval's task indexes, built once per process: do it before forking (the bundled tasks alone, which most
# commands need, and every task lm-eval knows, which a command naming one of its own tasks needs).
task_manager((), bundled_task_names())
task_manager()
