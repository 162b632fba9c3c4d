"""Run `compress` with accelerate's FSDP turned on for CPU processes (tests only).

accelerate (1.15) enables FSDP only for GPUs and other accelerators; on CPU processes over gloo
it would train full replicas, and `compress distill` refuses that. torch's FSDP2 itself shards
on CPU, so this launcher lifts that one rule, and nothing else, to run the FSDP code path of
`compress distill` (sharded training, gathering the full student, one writer) on a machine
without GPUs: `accelerate launch --config_file configs/accelerate-fsdp.yaml tests/fsdp_on_cpu.py
distill RECIPE ...`.
"""
import os
import runpy
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if (self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None
            and os.environ.get("ACCELERATE_USE_FSDP") == "true" and getattr(self, "fsdp_plugin", None) is None):
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


AcceleratorState.__init__ = _init_with_fsdp_on_cpu
sys.argv = ["compress", *sys.argv[1:]]
runpy.run_module("compress", run_name="__main__")
