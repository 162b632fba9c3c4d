"""Distillation: a smaller student trained on the teacher's (the recipe model's) outputs.

The student is the teacher with whole decoder layers removed (chosen by importance on
calibration text, or by an explicit keep-list) and optionally narrower MLPs, or a given
model directory or config that shares the teacher's tokenizer. Training runs on the
transformers Trainer, so `accelerate launch` spreads it over several GPUs unchanged, and it
checkpoints: an interrupted run resumes from its last checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from compress.core.data import load_texts
from compress.core.errors import CompressError, UsageError
from compress.core.faults import fault_point
from compress.build.methods.base import MethodContext, MethodResult, Timer, claim_work_dir, save_tokenizer
from compress.core.models import load_model, load_tokenizer, resolve_dtype, resolve_model


def batches(texts: list[str], tokenizer: Any, max_len: int, size: int = 8) -> list[dict[str, Any]]:
    """Padded batches of tokenized texts (for importance scores and KL measurements)."""
    out = []
    for i in range(0, len(texts), size):
        enc = tokenizer(texts[i:i + size], truncation=True, max_length=max_len, padding=True, return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def packed_dataset(texts: list[str], tokenizer: Any, block: int):
    """Texts joined with EOS and cut into blocks of exactly ``block`` tokens, labels = inputs."""
    import datasets

    ids: list[int] = []
    for enc in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        ids.extend(enc + [tokenizer.eos_token_id])
    n = len(ids) // block
    if n == 0:
        raise UsageError(f"the training data has {len(ids)} tokens, fewer than one block of {block}",
                         hint="give more text or a smaller training.max_seq_length")
    blocks = [ids[i * block:(i + 1) * block] for i in range(n)]
    return datasets.Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * block] * n, "labels": blocks})


def _same_tokenizer(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab()


def make_student(ctx: MethodContext, teacher: Any, tokenizer: Any, cal: list[dict[str, Any]]) -> tuple[Any, list[int], dict]:
    """The untrained student, the teacher layer each student layer maps to, and what was done."""
    import torch
    from transformers import AutoModelForCausalLM

    from compress.build.prune import choose_layers, decoder_layers, layer_importance, prune_depth, prune_width

    s = ctx.recipe.method.student
    n_teacher = teacher.config.num_hidden_layers
    details: dict[str, Any] = {"teacher_layers": n_teacher}
    if s.model is not None:
        ref = resolve_model(s.model)
        student_tok = load_tokenizer(ref.path, ctx.recipe.model.trust_remote_code)
        student = load_model(ref.path, dtype=ctx.recipe.model.dtype, trust_remote_code=ctx.recipe.model.trust_remote_code)
        if not _same_tokenizer(tokenizer, student_tok) or \
                student.get_input_embeddings().weight.shape[0] != teacher.get_input_embeddings().weight.shape[0]:
            raise UsageError(f"student {s.model} does not share the teacher's vocabulary",
                             hint="distillation matches next-token distributions, so both need the same tokenizer")
        details["student_source"] = s.model
    elif s.config is not None:
        config = teacher.config.__class__.from_dict(teacher.config.to_dict())
        for key, value in s.config.items():
            if not hasattr(config, key):
                raise UsageError(f"student.config.{key} is not a field of {type(config).__name__}")
            setattr(config, key, value)
        if getattr(config, "vocab_size", None) != teacher.config.vocab_size:
            raise UsageError("student.config changes vocab_size; the student must share the teacher's tokenizer")
        torch.manual_seed(ctx.recipe.method.training.seed)
        student = AutoModelForCausalLM.from_config(config)
        details["student_source"] = {"config": s.config}
    else:
        importance = layer_importance(teacher, cal)
        keep_n = max(1, round(n_teacher * s.depth_ratio))
        keep = sorted(s.keep_layers) if s.keep_layers is not None else choose_layers(importance, keep_n, s.importance)
        student = prune_depth(teacher, keep)
        details.update(student_source="pruned teacher", kept_layers=keep,
                       layer_importance=[round(x, 5) for x in importance], importance=s.importance
                       if s.keep_layers is None else "explicit keep_layers")
        if s.mlp_width_ratio < 1:
            _, width = prune_width(student, s.mlp_width_ratio, cal)
            details["mlp_width"] = width
        # Student layer j stands in for teacher layers keep[j] .. keep[j+1]-1: its output is
        # matched with the teacher's output at the end of that span (the last one with the
        # teacher's last layer, whose output feeds the same final norm and head).
        layer_map = [nxt - 1 for nxt in keep[1:]] + [n_teacher - 1]
        return student, layer_map, details
    n_student = len(decoder_layers(student)[2])
    layer_map = [min(n_teacher - 1, round((j + 1) * n_teacher / n_student) - 1) for j in range(n_student)]
    return student, layer_map, details


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint the Trainer finished writing; half-written ones (a run killed while
    saving) are removed, so that resuming never reads them."""
    import shutil

    found = []
    for path in checkpoints.glob("checkpoint-*") if checkpoints.is_dir() else []:
        step = path.name.rpartition("-")[2]
        complete = (path / "trainer_state.json").exists() and any(path.glob("*.safetensors"))
        if step.isdigit() and complete:
            found.append((int(step), path))
        else:
            shutil.rmtree(path, ignore_errors=True)
    return max(found)[1] if found else None


def _progress_callback(log, max_steps: int, terms):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            fault_point("distill.step")

        def on_save(self, args, state, control, **kwargs):
            fault_point("distill.after-checkpoint")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                extra = " ".join(f"{k} {v:.4f}" for k, v in terms().items())
                log(f"step {state.global_step}/{max_steps}  loss {logs['loss']:.4f}  {extra}  "
                    f"lr {logs.get('learning_rate', 0):.2e}")

    return Progress()


def train(ctx: MethodContext, student: Any, teacher: Any, tokenizer: Any,
          layer_map: list[int]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Train ``student`` on the teacher's outputs.

    Returns:
        What the training did, and the student's full state dict where the trained model is
        sharded (FSDP: the main process gets every weight, the others an empty dict), else None.
    """
    import torch
    from transformers import PrinterCallback, TrainingArguments, default_data_collator

    from compress.build.kd import make_trainer_class

    m = ctx.recipe.method
    t = m.training
    texts = load_texts(t.dataset, split=t.split, text_field=t.text_field)
    data = packed_dataset(texts, tokenizer, t.max_seq_length)
    ctx.log(f"training data: {len(texts)} texts from {t.dataset} -> {len(data)} blocks of {t.max_seq_length} tokens")
    if m.loss.hidden_weight > 0 and student.config.hidden_size != teacher.config.hidden_size:
        raise UsageError("a hidden-state loss needs the student and teacher to have the same hidden size",
                         hint="set loss.hidden_weight: 0")
    checkpoints = claim_work_dir(ctx) / "checkpoints"
    resume = last_complete_checkpoint(checkpoints)
    if resume:
        # News, not a detail: the training this run does is the rest of an interrupted one.
        ctx.warn(f"resuming from the last checkpoint in {checkpoints} ({resume.name}) of an interrupted run")
    cuda = torch.cuda.is_available() and ctx.device.startswith("cuda")
    args = TrainingArguments(
        output_dir=str(checkpoints), max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay,
        logging_steps=t.logging_steps, save_strategy="steps", save_steps=t.save_steps, save_total_limit=2,
        seed=t.seed, data_seed=t.seed, report_to="none", disable_tqdm=True, use_cpu=not cuda,
        bf16=cuda and resolve_dtype(ctx.base.path, ctx.recipe.model.dtype) == "bfloat16", remove_unused_columns=False,
        dataloader_pin_memory=cuda, ddp_find_unused_parameters=False,
    )
    trainer_cls = make_trainer_class()
    trainer = trainer_cls(model=student, args=args, train_dataset=data, data_collator=default_data_collator,
                          teacher=teacher, loss_spec=m.loss, layer_map=layer_map)
    distributed = trainer.accelerator.distributed_type.value  # NO, MULTI_CPU, MULTI_GPU, FSDP, ...
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and distributed != "FSDP":
        # accelerate turns FSDP on only for GPUs and other accelerators; elsewhere it would
        # silently train every process on a full replica instead.
        raise UsageError(f"FSDP was asked for, but accelerate does not shard on {distributed} processes",
                         hint="FSDP needs GPUs; on CPU processes use `torchrun --nproc_per_node N -m compress "
                              "distill RECIPE` (data parallel, a full student in each process)")
    # Progress goes through ctx.log (stderr); the Trainer's own printer would write dicts to stdout.
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_progress_callback(ctx.log, t.max_steps, lambda: trainer.last_terms))
    state = None
    if resume and int(resume.name.rpartition("-")[2]) >= t.max_steps:
        # Killed after its last checkpoint: that checkpoint is the trained student (the Trainer,
        # asked to resume at max_steps, would take one more step).
        steps, loss = _load_final_checkpoint(student, resume)
    else:
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        steps, loss = int(output.global_step), float(output.training_loss)
        if trainer.is_fsdp_enabled:
            # Each process holds a shard of every weight; gathering them takes every process.
            state = trainer.accelerator.get_state_dict(trainer.model)
    return {"steps": steps, "train_loss": round(loss, 5),
            "resumed": bool(resume), "blocks": len(data), "texts": len(texts), "processes": args.world_size,
            "distributed_type": distributed,
            "global_batch": t.batch_size * t.gradient_accumulation * args.world_size}, state


def _load_final_checkpoint(student: Any, checkpoint: Path) -> tuple[int, float]:
    """Load a finished training's last checkpoint into ``student``; return its step and mean loss."""
    import json

    from safetensors.torch import load_file

    state = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        state.update(load_file(str(f)))
    loaded = student.load_state_dict(state, strict=False)
    missing = [k for k in loaded.missing_keys if not k.startswith("lm_head")]  # lm_head may be tied
    if missing or loaded.unexpected_keys:
        raise CompressError(f"checkpoint {checkpoint} does not match the student "
                            f"({len(missing)} missing, {len(loaded.unexpected_keys)} unexpected tensors)",
                            hint=f"remove {checkpoint.parent} and train again")
    trainer_state = json.loads((checkpoint / "trainer_state.json").read_text())
    losses = [e["loss"] for e in trainer_state.get("log_history", []) if "loss" in e]
    return int(trainer_state["global_step"]), (sum(losses) / len(losses) if losses else float("nan"))


def apply(ctx: MethodContext) -> MethodResult:
    from compress.build.kd import mean_kl

    m, spec, cal = ctx.recipe.method, ctx.recipe.model, ctx.recipe.calibration
    timer = Timer()
    with timer("load"):
        teacher = load_model(ctx.base.path, dtype=spec.dtype, trust_remote_code=spec.trust_remote_code,
                             allow_pickle=spec.allow_pickle)
        tokenizer = load_tokenizer(ctx.base.path, spec.trust_remote_code)
    held_out = batches(load_texts(cal.dataset, split=cal.split, config_name=cal.config_name, text_field=cal.text_field,
                                  num_samples=cal.num_samples, seed=cal.seed), tokenizer, cal.max_seq_length)
    with timer("prune"):
        student, layer_map, details = make_student(ctx, teacher, tokenizer, held_out)
    student.train()
    kl_before = mean_kl(student.eval(), teacher, held_out)
    ctx.log(f"student: {student.config.num_hidden_layers} layers, {_params(student) / 1e6:.2f}M parameters "
            f"(teacher {_params(teacher) / 1e6:.2f}M); KL to the teacher on held-out text {kl_before:.4f}")
    with timer("train"):
        details["training"], state = train(ctx, student.train(), teacher, tokenizer, layer_map)
    student.eval()
    # The Trainer has moved the student (and the loss the teacher) to this process's device.
    device = next(student.parameters()).device
    held_out = [{k: v.to(device) for k, v in b.items()} for b in held_out]
    kl_after = mean_kl(student, teacher.to(device), held_out)
    ctx.log(f"KL to the teacher on held-out text: {kl_before:.4f} -> {kl_after:.4f}")
    with timer("save"):
        student.save_pretrained(str(ctx.out_dir), safe_serialization=True, state_dict=state)
        save_tokenizer(ctx, tokenizer)
    details.update(student_layers=student.config.num_hidden_layers, layer_map=layer_map,
                   student_parameters=_params(student), teacher_parameters=_params(teacher),
                   heldout_kl_before=round(kl_before, 5), heldout_kl_after=round(kl_after, 5),
                   loss=m.loss.model_dump())
    scheme = (f"distilled student, {student.config.num_hidden_layers} of {teacher.config.num_hidden_layers} layers, "
              f"{m.loss.kind} T={m.loss.temperature:g}")
    return MethodResult(format="safetensors", scheme=scheme, details=details, timings=timer.timings)


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
