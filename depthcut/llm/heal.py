"""Healing a pruned LLM with LoRA (SPEC B4, the Shortened LLaMA recipe).

LoRA adapters (peft) on every linear projection of the decoder (``target_modules="all-linear"``, which
leaves the LM head alone), r = 8, α = 16, dropout 0.05, AdamW lr 1e-4, ``steps`` steps of next-token loss on
the heal split. The adapters are then merged (``merge_and_unload``) so the result is a plain
``PreTrainedModel`` that saves and reloads without peft.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..errors import DepthcutError
from ..log import say as log_say
from .device import to_model

LORA_DEFAULTS = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "lr": 1e-4}


def heal(model, windows: torch.Tensor, steps: int, batch_size: int = 4, lr: float = 1e-4, r: int = 8,
         alpha: int = 16, dropout: float = 0.05, seed: int = 0, log_every: int = 10,
         say: Callable[[str], None] | None = None):
    """LoRA-heal ``model`` on ``windows`` (LongTensor [n, length]) for ``steps`` steps; returns the merged
    plain model in eval mode (``steps == 0`` returns ``model`` unchanged). Progress lines go to ``say``
    (default: the "depthcut" logger)."""
    say = say or (lambda message: log_say(message, verb="llm heal"))
    if steps <= 0:
        return model
    try:
        from peft import LoraConfig, LoraModel
    except ImportError:  # pragma: no cover - peft is a dependency of the llm extra
        raise DepthcutError("healing needs peft: pip install peft") from None
    if len(windows) < 1:
        raise DepthcutError("no heal windows: the heal split of the text is empty")
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear",
                        task_type="CAUSAL_LM")
    # The tuner itself, not get_peft_model: its PeftModel wrapper adds nothing to LoRA training, and it reads
    # transformers' deprecated ``is_gradient_checkpointing`` (a FutureWarning on every heal).
    peft_model = LoraModel(model, config, "default")
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)
    perm, cursor = torch.randperm(len(windows), generator=order), 0
    peft_model.train()
    start, running = time.perf_counter(), 0.0
    for step in range(1, steps + 1):
        if cursor + batch_size > len(perm):  # new epoch over the heal windows
            perm, cursor = torch.randperm(len(windows), generator=order), 0
        batch = to_model(model, windows[perm[cursor:cursor + batch_size]])
        cursor += batch_size
        loss = peft_model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.item()
        if step % log_every == 0 or step == steps:
            n = step % log_every or log_every
            say(f"heal step {step}/{steps}  loss {running / n:.4f}  ({time.perf_counter() - start:.0f}s)")
            running = 0.0
    merged = peft_model.merge_and_unload()
    merged.eval()
    for p in merged.parameters():
        p.requires_grad_(True)
        p.grad = None
    return merged
