"""Perplexity with its protocol written down (SPEC B4: never compare PPL across protocols).

Protocol: the held-out text is tokenized once without special tokens and cut into consecutive,
non-overlapping windows (stride = window length) of ``window − 1`` text tokens; each window gets BOS
prepended (so it has ``window`` input tokens) and every text token in it is scored. Tokenizers without BOS
get EOS (``<|endoftext|>``) in its place; ``bos=False`` cuts windows of ``window`` text tokens and scores
tokens 2..window. PPL = exp(mean NLL over all scored tokens).
"""
from __future__ import annotations

import math

import torch

from .criteria import nll
from .text import bos_id, text_tokens, windows_from_ids


def eval_windows(tokenizer, text: str, window: int = 128, max_windows: int | None = None,
                 bos: bool = True) -> torch.Tensor:
    """The first ``max_windows`` (all if None) consecutive non-overlapping windows of ``text``."""
    ids = text_tokens(tokenizer, text)
    start = bos_id(tokenizer) if bos else None
    available = len(ids) // (window - (start is not None))
    n = available if max_windows is None else min(max_windows, available)
    return windows_from_ids(ids, max(n, 1), window, None, start, what="held-out text")


def protocol(tokenizer, window: int, n_windows: int, bos: bool, corpus: str | None = None) -> dict:
    start = bos_id(tokenizer) if bos else None
    token = tokenizer.convert_ids_to_tokens(start) if start is not None else None
    return {"window": window, "stride": window, "overlap": 0, "windows": n_windows,
            "bos": bos, "bos_token": token, "scored_tokens_per_window": window - 1,
            "corpus": corpus, "statistic": "exp(mean token NLL)"}


def perplexity_of_windows(model, windows: torch.Tensor, batch_size: int = 8) -> dict:
    """PPL of pre-cut windows (BOS, if any, already in column 0)."""
    mean_nll = nll(model, windows, batch_size)
    return {"ppl": math.exp(mean_nll), "nll": mean_nll, "tokens": windows.shape[0] * (windows.shape[1] - 1)}


def perplexity(model, tokenizer, text: str, window: int = 128, max_windows: int | None = None,
               bos: bool = True, batch_size: int = 8, corpus: str | None = None) -> dict:
    """{"ppl", "nll", "tokens", "protocol"} of ``model`` on held-out ``text`` (see module doc)."""
    windows = eval_windows(tokenizer, text, window, max_windows, bos)
    result = perplexity_of_windows(model, windows, batch_size)
    result["protocol"] = protocol(tokenizer, window, len(windows), bos, corpus)
    return result
