"""Real text for calibration, healing and evaluation, available offline, from a place the report names.

The named corpora are the two small text files that the gensim package ships as test data
(``gensim/test/test_data``, LGPL-2.1, like gensim):

* ``lee``  - ``lee_background.cor``: ~300 Australian news articles (Lee et al. 2005), plain English, ~60k words.
* ``wiki-stemmed`` - ``head500.noblanks.cor``: 500 Wikipedia articles, *stemmed and stop-word free*
  (not natural text: useful only as a different distribution).

Where they are read from, in this order (:func:`corpus_source` says which one a run used):

1. the installed ``gensim`` distribution's files (``make install`` installs ``gensim==4.4.0`` with
   ``--no-deps``: its package data is all we use, and gensim is never imported);
2. a gensim wheel in ``~/.cache/depthcut/wheels`` (read with :mod:`zipfile`; older depthcut put it there).

Nothing is downloaded at run time: without either, the error says what to install. Any UTF-8 text file can be
passed instead of a corpus name.

Every experiment splits one text into DISJOINT parts (calibration / heal / held-out eval) with
:func:`split_text`, so the model is never scored on text it was calibrated or healed on.
"""
from __future__ import annotations

import glob
import os
import random
import zipfile
from pathlib import Path

import torch

from ..cache import DEFAULT_CACHE_DIR
from ..errors import DataError, DepthcutError

WHEEL_DIR = DEFAULT_CACHE_DIR / "wheels"
CORPORA = {
    "lee": "gensim/test/test_data/lee_background.cor",
    "wiki-stemmed": "gensim/test/test_data/head500.noblanks.cor",
}
DEFAULT_CORPUS = "lee"
# Pinned: the corpora (and so every perplexity in bench/results) must not change under a new release.
GENSIM = "gensim==4.4.0"
INSTALL_HINT = f"pip install --no-deps {GENSIM}"


def _installed(member: str) -> Path | None:
    """``member`` inside the installed gensim distribution, if there is one (gensim is not imported)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("gensim")
    except metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(member))
    return path if path.is_file() else None


def _wheel() -> Path | None:
    found = sorted(glob.glob(str(WHEEL_DIR / f"gensim-{GENSIM.split('==')[1]}-*.whl")))
    return Path(found[-1]) if found else None


def corpus_source(name: str) -> str:
    """Where the text of corpus ``name`` (or text file ``name``) is read from, for the report."""
    if name not in CORPORA:
        return str(Path(os.path.expanduser(name)).resolve())
    installed = _installed(CORPORA[name])
    if installed is not None:
        from importlib import metadata
        return f"{installed} (gensim {metadata.version('gensim')} package data)"
    wheel = _wheel()
    if wheel is not None:
        return f"{wheel}!{CORPORA[name]}"
    raise DataError(f"corpus {name!r} is gensim's test data, and no gensim is installed here (nor a gensim wheel in "
                    f"{WHEEL_DIR}); nothing is downloaded at run time: {INSTALL_HINT} (make install does), or "
                    f"pass the path of a UTF-8 text file")


def load_corpus(name: str = DEFAULT_CORPUS) -> str:
    """The text of a named corpus (see :data:`CORPORA` and the module doc) or of a user's UTF-8 text file."""
    if name in CORPORA:
        corpus_source(name)          # one clear error when neither source is there
        installed = _installed(CORPORA[name])
        if installed is not None:
            return installed.read_text(encoding="utf-8")
        with zipfile.ZipFile(_wheel()) as wheel:
            try:
                return wheel.read(CORPORA[name]).decode("utf-8")
            except KeyError:
                raise DataError(f"{CORPORA[name]} is missing from the gensim wheel in {WHEEL_DIR}") from None
    path = Path(os.path.expanduser(name))
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"text file {path} is not UTF-8 ({e})") from None
    raise DataError(f"unknown corpus {name!r}: use one of {sorted(CORPORA)} or the path of a UTF-8 text file")


def split_text(text: str, fractions: tuple[float, ...] | list[float]) -> list[str]:
    """Cut ``text`` into consecutive, disjoint parts of the given character fractions.

    Cuts fall on line boundaries (a corpus line is one document), so no document is shared between parts.
    ``fractions`` must be positive and sum to at most 1; the last part is exactly its fraction, not the rest.
    """
    if any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"fractions must be positive and sum to <= 1, got {fractions}")
    lines = text.splitlines(keepends=True)
    if len(lines) < 4 * len(fractions):  # too few documents: cut characters instead
        boundaries = list(range(len(text) + 1))
    else:
        boundaries = [0]
        for line in lines:
            boundaries.append(boundaries[-1] + len(line))
    parts, start, consumed = [], 0, 0.0
    for fraction in fractions:
        consumed += fraction
        target = consumed * len(text)
        end = max((b for b in boundaries if b <= target + 1e-6), default=0)
        parts.append(text[start:max(end, start)])
        start = max(end, start)
    return parts


def text_tokens(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without any special token (BOS is added per window, explicitly)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def bos_id(tokenizer) -> int | None:
    """The id prepended to each window: BOS, or EOS/<|endoftext|> for tokenizers without BOS (GPT-2 style)."""
    if getattr(tokenizer, "bos_token_id", None) is not None:
        return int(tokenizer.bos_token_id)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        return int(tokenizer.eos_token_id)
    return None


def windows_from_ids(ids: list[int], n: int, length: int, seed: int | None, bos: int | None,
                     what: str = "text") -> torch.Tensor:
    """``n`` non-overlapping windows of ``length`` tokens (BOS included when ``bos`` is not None).

    ``seed=None`` takes the first ``n`` windows in order (evaluation); an int draws ``n`` of the available
    non-overlapping slots at random (calibration).
    """
    if n < 1 or length < 2:
        raise DepthcutError(f"need at least 1 window of at least 2 tokens, got n={n}, length={length}")
    body = length - (bos is not None)
    slots = len(ids) // body
    if slots < n:
        raise DepthcutError(
            f"{what} too short: {n} windows of {length} tokens need {n * body} text tokens, "
            f"only {len(ids)} available; use fewer/shorter windows or a longer text"
        )
    chosen = list(range(n)) if seed is None else sorted(random.Random(seed).sample(range(slots), n))
    rows = []
    for slot in chosen:
        row = ids[slot * body:(slot + 1) * body]
        rows.append(([bos] if bos is not None else []) + row)
    return torch.tensor(rows, dtype=torch.long)


def calibration_windows(tokenizer, text: str, n: int, length: int, seed: int | None = 0,
                        bos: bool = True) -> torch.Tensor:
    """LongTensor [n, length] of non-overlapping windows of ``text``; column 0 is BOS when ``bos``."""
    return windows_from_ids(text_tokens(tokenizer, text), n, length, seed, bos_id(tokenizer) if bos else None)
