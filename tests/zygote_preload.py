"""Imported once by the tests' fork server (tests/zygote.py, which sets what compress sets before these imports):
everything a compress command loads before it starts working. No torch operation runs here, so forking afterwards
is safe."""
import compress.cli  # noqa: F401
import compress.pipeline  # noqa: F401
import llmcompressor  # noqa: F401
import lm_eval  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401
from compress.measure.tasks import task_manager

task_manager()  # lm-eval indexes every task it knows once per process: do it before forking
