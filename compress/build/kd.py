"""Knowledge-distillation losses and the Trainer that applies them.

All losses compare the student's next-token distribution with the teacher's, token by
token, over positions that are not padding, at a temperature T (both distributions softened
by T, the loss scaled by T^2 so gradients keep their size as T changes; Hinton et al., 2015).

- forward KL, KL(teacher || student): mass-covering, the classic choice.
- reverse KL, KL(student || teacher): mode-seeking.
- generalized JSD with ``beta``: beta * KL(T || M) + (1 - beta) * KL(S || M), with the mixture
  M = beta * T + (1 - beta) * S; beta = 0.5 is the Jensen-Shannon divergence.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_token.mean()
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def _log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    return (F.log_softmax(student_logits.float() / temperature, dim=-1),
            F.log_softmax(teacher_logits.float() / temperature, dim=-1))


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    s, t = _log_probs(student_logits, teacher_logits, temperature)
    return _masked_mean((t.exp() * (t - s)).sum(-1), mask) * temperature**2


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    s, t = _log_probs(student_logits, teacher_logits, temperature)
    return _masked_mean((s.exp() * (s - t)).sum(-1), mask) * temperature**2


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
                    temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    if not 0 < beta < 1:
        raise ValueError("beta must be strictly between 0 and 1 (use forward_kl or reverse_kl at the ends)")
    s, t = _log_probs(student_logits, teacher_logits, temperature)
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
    kl_t = (t.exp() * (t - m)).sum(-1)
    kl_s = (s.exp() * (s - m)).sum(-1)
    return _masked_mean(beta * kl_t + (1 - beta) * kl_s, mask) * temperature**2


def hidden_loss(student_h: torch.Tensor, teacher_h: torch.Tensor, kind: str = "mse",
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE, or 1 - cosine similarity, between mapped hidden states (per token, then averaged)."""
    if kind == "mse":
        per_token = (student_h.float() - teacher_h.float()).pow(2).mean(-1)
    else:
        per_token = 1 - F.cosine_similarity(student_h.float(), teacher_h.float(), dim=-1)
    return _masked_mean(per_token, mask)


def kd_loss(spec: Any, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            mask: torch.Tensor | None) -> torch.Tensor:
    """The distribution-matching term chosen by a ``LossSpec``."""
    if spec.kind == "forward_kl":
        return forward_kl(student_logits, teacher_logits, spec.temperature, mask)
    if spec.kind == "reverse_kl":
        return reverse_kl(student_logits, teacher_logits, spec.temperature, mask)
    return generalized_jsd(student_logits, teacher_logits, spec.beta, spec.temperature, mask)


def shifted_mask(attention_mask: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor | None:
    """Positions whose next-token prediction counts (not padding)."""
    if labels is not None:
        return labels != -100
    return attention_mask.bool() if attention_mask is not None else None


def make_trainer_class():
    """A transformers Trainer whose loss is the distillation loss (built lazily: transformers is heavy)."""
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """Trainer for a student; the teacher runs in eval mode, without gradients, on the student's device."""

        def __init__(self, *args: Any, teacher: torch.nn.Module, loss_spec: Any,
                     layer_map: list[int] | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.teacher = teacher.eval().requires_grad_(False)
            self.loss_spec = loss_spec
            self.layer_map = layer_map
            self.last_terms: dict[str, float] = {}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            spec = self.loss_spec
            want_hidden = spec.hidden_weight > 0
            labels = inputs.get("labels")
            device = inputs["input_ids"].device
            if next(self.teacher.parameters()).device != device:
                self.teacher.to(device)
            with torch.no_grad():
                t_out = self.teacher(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                                     output_hidden_states=want_hidden)
            s_out = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                          labels=labels if spec.ce_weight > 0 else None, output_hidden_states=want_hidden)
            mask = shifted_mask(inputs.get("attention_mask"), labels)
            kd = kd_loss(spec, s_out.logits, t_out.logits, mask)
            loss = (1 - spec.ce_weight) * kd
            terms = {"kd": kd.detach().item()}
            if spec.ce_weight > 0:
                loss = loss + spec.ce_weight * s_out.loss
                terms["ce"] = s_out.loss.detach().item()
            if want_hidden:
                h = sum(hidden_loss(s_out.hidden_states[j + 1], t_out.hidden_states[t + 1], spec.hidden_loss, mask)
                        for j, t in enumerate(self.layer_map or []))
                h = h / max(1, len(self.layer_map or []))
                loss = loss + spec.hidden_weight * h
                terms["hidden"] = float(h.detach().item())
            self.last_terms = terms
            return (loss, s_out) if return_outputs else loss

    return DistillTrainer


@torch.no_grad()
def mean_kl(student: torch.nn.Module, teacher: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Token-averaged forward KL(teacher || student) at temperature 1 over some batches."""
    total, count = 0.0, 0
    for batch in batches:
        mask = batch["attention_mask"]
        s = student(input_ids=batch["input_ids"], attention_mask=mask).logits
        t = teacher(input_ids=batch["input_ids"], attention_mask=mask).logits
        n = int(mask.sum())
        total += forward_kl(s, t, 1.0, mask).item() * n
        count += n
    return total / max(1, count)
