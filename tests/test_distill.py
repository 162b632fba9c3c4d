"""Distillation: losses against hand-computed values, pruned students that load anywhere, a short
run that brings the student closer to its teacher, resume after an interruption."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compress.build.kd import forward_kl, generalized_jsd, hidden_loss, reverse_kl
from compress.build.prune import choose_layers, prune_depth
from conftest import BUILTIN, ROOT, run_cli

# One position, two tokens: teacher p = (3/4, 1/4) (logits ln 3, 0), student q = (1/2, 1/2).
T_LOGITS = torch.tensor([[[math.log(3), 0.0]]])
S_LOGITS = torch.tensor([[[0.0, 0.0]]])
P, Q = (0.75, 0.25), (0.5, 0.5)


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def test_forward_and_reverse_kl_by_hand():
    assert forward_kl(S_LOGITS, T_LOGITS).item() == pytest.approx(kl(P, Q), abs=1e-6)  # 0.130812
    assert reverse_kl(S_LOGITS, T_LOGITS).item() == pytest.approx(kl(Q, P), abs=1e-6)  # 0.143841


def test_temperature_softens_both_and_scales_by_t_squared():
    t = 2.0
    pt = (math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1))  # softmax(ln3/2, 0)
    assert forward_kl(S_LOGITS, T_LOGITS, temperature=t).item() == pytest.approx(t * t * kl(pt, Q), abs=1e-6)


def test_generalized_jsd_by_hand():
    for beta in (0.5, 0.2, 0.9):
        m = tuple(beta * p + (1 - beta) * q for p, q in zip(P, Q))
        expected = beta * kl(P, m) + (1 - beta) * kl(Q, m)
        assert generalized_jsd(S_LOGITS, T_LOGITS, beta=beta).item() == pytest.approx(expected, abs=1e-6)
    assert generalized_jsd(S_LOGITS, T_LOGITS, beta=0.5).item() == pytest.approx(0.033822, abs=1e-5)
    with pytest.raises(ValueError):
        generalized_jsd(S_LOGITS, T_LOGITS, beta=1.0)


def test_padding_positions_do_not_count():
    s = torch.cat([S_LOGITS, torch.tensor([[[5.0, -5.0]]])], dim=1)  # second position is padding
    t = torch.cat([T_LOGITS, torch.tensor([[[-5.0, 5.0]]])], dim=1)
    mask = torch.tensor([[True, False]])
    assert forward_kl(s, t, mask=mask).item() == pytest.approx(kl(P, Q), abs=1e-6)
    assert forward_kl(s, t).item() > 1.0  # unmasked, the padding position dominates


def test_hidden_state_losses_by_hand():
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    b = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    assert hidden_loss(a, b, "mse").item() == pytest.approx(((1 + 1) / 2 + (0 + 1) / 2) / 2)  # 0.75
    assert hidden_loss(a, b, "cosine").item() == pytest.approx(((1 - 0) + (1 - 1)) / 2)  # 0.5


def test_layer_choice():
    imp = [0.9, 0.1, 0.5, 0.3]
    assert choose_layers(imp, 2, "cosine") == [0, 2]
    assert choose_layers(imp, 2, "first") == [0, 1]
    assert choose_layers(imp, 2, "last") == [2, 3]


RELOAD = r"""
import sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1])
ids = torch.randint(3, 1000, (2, 12))
with torch.no_grad():
    out = m.generate(input_ids=ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    logits = m(input_ids=ids).logits
print(m.config.num_hidden_layers, len(m.model.layers), bool(torch.isfinite(logits).all()), out.shape[1],
      "compress" in sys.modules)
"""


def test_pruned_student_loads_in_plain_transformers_and_generates(tmp_path):
    from compress.core.models import load_model

    teacher = load_model(BUILTIN)
    student = prune_depth(teacher, [0, 3])
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    assert teacher.config.num_hidden_layers == 4  # the teacher is untouched
    student.save_pretrained(str(tmp_path / "s"))
    p = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path / "s")], capture_output=True, text=True,
                       cwd="/", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["2", "2", "True", "17", "False"]


def _distill(tmp_path, *extra):
    return run_cli("distill", str(ROOT / "recipes" / "tiny-llama-distill.yaml"), "-o", str(tmp_path / "student"),
                   "--set", "method.training.max_steps=30", "--set", "method.training.batch_size=8",
                   "--set", "method.training.logging_steps=10", "--set", "calibration.num_samples=32",
                   *extra, "--json")


def test_short_distillation_lowers_kl_to_the_teacher(tmp_path, runs_dir):
    p = _distill(tmp_path, "-v")  # -v: the training steps' lines on stderr (else in the log file)
    assert p.returncode == 0, p.stderr[-3000:]
    manifest = json.loads(p.stdout)["manifest"]
    d = manifest["method"]["details"]
    assert d["student_layers"] == 2 and d["teacher_layers"] == 4 and len(d["kept_layers"]) == 2
    assert d["student_parameters"] < 0.7 * d["teacher_parameters"]
    assert d["training"]["steps"] == 30
    assert d["heldout_kl_after"] < 0.9 * d["heldout_kl_before"], d
    assert "step 10/30" in p.stderr and "loss" in p.stderr  # progress with the running loss
    assert manifest["method"]["format"] == "safetensors" and 0.5 < manifest["size"]["ratio"] < 0.8
    assert not (tmp_path / ".student.work").exists()  # checkpoints are cleaned up once complete


def test_student_with_another_vocabulary_is_refused(tmp_path, runs_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other"
    tok = AutoTokenizer.from_pretrained(str(BUILTIN))
    tok.add_tokens(["<extra-token>"])
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(str(other))
    tok.save_pretrained(str(other))
    p = _distill(tmp_path, "--set", "method.student.from_teacher=false", "--set", f"method.student.model={other}")
    assert p.returncode == 2
    assert "does not share the teacher's vocabulary" in p.stderr
    assert not (tmp_path / "student").exists()


def test_interrupted_distillation_resumes_from_its_checkpoint(tmp_path, runs_dir):
    args = [sys.executable, "-m", "compress", "distill", str(ROOT / "recipes" / "tiny-llama-distill.yaml"),
            "-o", str(tmp_path / "student"), "--set", "method.training.max_steps=40",
            "--set", "method.training.save_steps=10", "--set", "method.training.batch_size=8",
            "--set", "calibration.num_samples=16", "--json"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    checkpoints = tmp_path / ".student.work" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(checkpoints.glob("checkpoint-20")):
        time.sleep(0.2)
    assert list(checkpoints.glob("checkpoint-*")), "no checkpoint was written"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "student").exists()  # nothing half-written where the artifact goes
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from the last checkpoint" in again.stderr
    d = json.loads(again.stdout)["manifest"]["method"]["details"]
    assert d["training"]["resumed"] is True and d["training"]["steps"] == 40


def test_distilled_student_is_gated_and_can_be_quantized_by_another_recipe(tmp_path, runs_dir):
    """`compress run` on the distill recipe gates the student like any artifact; a second recipe
    names that run's output as its model (`run:tiny-llama-distill`) and quantizes it."""
    fast = ["--set", "bench.repeats=3", "--set", "bench.batch_sizes=[4]", "--set", "bench.output_tokens=16",
            "--set", "calibration.num_samples=16"]
    p = run_cli("run", str(ROOT / "recipes" / "tiny-llama-distill.yaml"), *fast,
                "--set", "method.training.max_steps=20", "--set", "method.training.batch_size=8",
                "-o", str(tmp_path / "dist" / "student"), "--json", cwd=tmp_path)
    assert p.returncode in (0, 1, 3), p.stderr[-3000:]  # gated like any artifact, whatever the verdict
    out = json.loads(p.stdout)
    checks = {c["metric"]: c for c in out["gate"]["checks"]}
    assert set(checks) == {"tiny_facts_mc/acc", "throughput_speedup"}
    # Measured and shown (how much faster the student is, is for scripts/ to measure, not for a timed assert).
    speed = checks["throughput_speedup"]
    assert speed["measured"] > 0 and speed["shown"].startswith(f"{speed['measured']:.3g}x"), speed
    q = run_cli("quantize", str(ROOT / "recipes" / "demo" / "tiny-llama-distill-int4.yaml"),
                "--set", "calibration.num_samples=16", "--json", cwd=tmp_path)
    assert q.returncode == 0, q.stderr[-3000:]
    m = json.loads(q.stdout)["manifest"]
    assert m == json.loads((Path(json.loads(q.stdout)["path"]) / "manifest.json").read_text())
    assert m["base_model"]["source"] == "run" and m["base_model"]["id"] == "run:tiny-llama-distill"
    assert m["method"]["details"]["layers_quantized"] == 14  # 2 layers x 7 linears
    if out["verdict"] != "PASS":
        assert "has not passed its own gate" in q.stderr


def test_data_parallel_training_over_two_processes_writes_one_artifact(tmp_path, runs_dir):
    """`torchrun` (or `accelerate launch`) spreads training with no new code; only the main
    process writes the artifact and prints the result."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    p = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "compress", "distill",
                        str(ROOT / "recipes" / "tiny-llama-distill.yaml"), "-o", str(tmp_path / "student"),
                        "--set", "method.training.max_steps=10", "--set", "method.training.batch_size=4",
                        "--set", "calibration.num_samples=16", "--json"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    training = json.loads(p.stdout)["manifest"]["method"]["details"]["training"]  # one JSON document
    assert training["processes"] == 2 and training["global_batch"] == 8 and training["steps"] == 10
    assert training["distributed_type"] == "MULTI_CPU"
    assert (tmp_path / "student" / "manifest.json").exists()
    assert not list(tmp_path.glob(".*")), list(tmp_path.iterdir())  # no temporary or work directory left


def _accelerate_fsdp(tmp_path, processes: int, lift_cpu_rule: bool = False):
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    program = [str(ROOT / "tests" / "fsdp_on_cpu.py")] if lift_cpu_rule else ["-m", "compress"]
    return subprocess.run([accelerate, "launch", "--config_file", str(ROOT / "configs" / "accelerate-fsdp.yaml"),
                           "--num_processes", str(processes), *program, "distill",
                           str(ROOT / "recipes" / "tiny-llama-distill.yaml"), "-o", str(tmp_path / "student"),
                           "--set", "method.training.max_steps=10", "--set", "method.training.batch_size=4",
                           "--set", "calibration.num_samples=16", "--json"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on GPUs the FSDP config shards (the gpu test below)")
def test_fsdp_config_on_cpu_processes_is_refused_not_run_as_ddp(tmp_path, runs_dir):
    """accelerate turns FSDP on only for GPUs and other accelerators: on CPU processes the FSDP
    config would silently train a full replica in each process. Every process stops, nothing is written."""
    p = _accelerate_fsdp(tmp_path, 2)
    assert p.returncode != 0
    refused = "FSDP was asked for, but accelerate does not shard on MULTI_CPU processes"
    assert p.stderr.count(refused) == 2, p.stderr[-3000:]  # both processes, at the same point: no hang
    assert "torchrun --nproc_per_node N -m compress distill RECIPE" in p.stderr
    assert "manifest" not in p.stdout and not (tmp_path / "student").exists()


@pytest.mark.skipif(torch.cuda.device_count() == 1, reason="FSDP over two processes needs two GPUs, or none")
@pytest.mark.slow
def test_fsdp_over_two_processes_shards_the_student_and_saves_it_whole(tmp_path, runs_dir):
    """The FSDP path (FSDP2 shards, the gathered student, one writer) on two GPUs, or on two CPU
    processes over gloo with accelerate's GPU-only rule lifted by tests/fsdp_on_cpu.py. (In `make test-slow`: on
    CPU processes the product refuses FSDP, the test above; two processes training are in the default suite, the
    data-parallel test.)"""
    p = _accelerate_fsdp(tmp_path, 2, lift_cpu_rule=not torch.cuda.is_available())
    assert p.returncode == 0, p.stderr[-3000:]
    d = json.loads(p.stdout)["manifest"]["method"]["details"]  # one JSON document: the main process's
    t = d["training"]
    assert t["distributed_type"] == "FSDP" and t["processes"] == 2 and t["global_batch"] == 8 and t["steps"] == 10
    from safetensors import safe_open

    with safe_open(str(tmp_path / "student" / "model.safetensors"), "pt") as f:  # gathered, not one shard
        assert sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()) == d["student_parameters"] == 2229504
    r = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path / "student")], capture_output=True, text=True,
                       cwd="/", timeout=300)
    assert r.returncode == 0 and r.stdout.split()[:3] == ["2", "2", "True"], r.stderr[-1000:]
    assert not list(tmp_path.glob(".*")), list(tmp_path.iterdir())


def test_width_pruning_keeps_the_most_active_channels_in_multiples_of_128(tmp_path):
    from compress.build.methods.distill import batches
    from compress.core.models import load_model, load_tokenizer
    from compress.build.prune import prune_width

    model, tok = load_model(BUILTIN), load_tokenizer(BUILTIN)
    cal = batches(["Alice lives in Brell. Alice works as a baker."] * 4, tok, 32)
    ref = model(**cal[0]).logits
    pruned, width = prune_width(prune_depth(model, [0, 1, 2, 3]), 0.5, cal)
    assert width == 384 and pruned.config.intermediate_size == 384
    mlp = pruned.model.layers[0].mlp
    assert mlp.up_proj.out_features == mlp.gate_proj.out_features == mlp.down_proj.in_features == 384
    out = pruned(**cal[0]).logits
    assert torch.isfinite(out).all()
    # Half the channels, chosen by importance, keep the next-token choice mostly intact.
    agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree > 0.5
    pruned.save_pretrained(str(tmp_path / "w"))
    p = subprocess.run([sys.executable, "-c", RELOAD.replace("len(m.model.layers)", "m.config.intermediate_size"),
                        str(tmp_path / "w")], capture_output=True, text=True, cwd="/", timeout=300)
    assert p.returncode == 0 and p.stdout.split()[:3] == ["4", "384", "True"], p.stderr[-1000:]


def test_student_from_a_config(tmp_path, runs_dir):
    p = _distill(tmp_path, "--set", "method.student.from_teacher=false",
                 "--set", "method.student.config={num_hidden_layers: 1, intermediate_size: 256}",
                 "--set", "method.training.max_steps=5")
    assert p.returncode == 0, p.stderr[-3000:]
    d = json.loads(p.stdout)["manifest"]["method"]["details"]
    assert d["student_layers"] == 1 and d["student_source"] == {"config": {"num_hidden_layers": 1, "intermediate_size": 256}}
    assert d["layer_map"] == [3]  # the one student layer is matched with the teacher's last
