"""The slow path's pieces: every answer of a comparison from one generation call, then each marked
and timed against the full model's.

``generate_rows`` answers every row (the full model's, a pre-LLM ``pruning.Selection`` or an
in-LLM plan) in one ``Runner.generate_many`` call, then times each row's prefill alone with a
one-token generation, so the speed-up compares like with like. ``answer_row`` turns one answer into
the plain row the page and the API show: text, token counts, prefill time and speed-up, agreement
with the full answer, and the object mentions ``scoring.mark_answer`` marks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from scoring import Vocabulary, mark_answer, normalize_words, same_answer, word_overlap

from .runtime import Generation, GenerationOptions

if TYPE_CHECKING:
    from .runtime import Encoding, Runner

__all__ = ["answer_row", "generate_rows"]


def generate_rows(
    runner: Runner,
    encoding: Encoding,
    prompt: str,
    rows: Mapping[str, Any],
    max_new_tokens: int,
    *,
    measure_prefill: bool,
    cancel: threading.Event | None,
    progress: Callable[[str, str], None] | None,
) -> tuple[list[Generation], float, dict[str, float | None]]:
    """Each row's answer (name -> what ``generate_many`` takes), the call's wall time in ms, and each
    row's prefill time in ms (measured unless ``measure_prefill`` is False; rows after ``cancel``
    is set are left out). ``progress(name, text)`` gets every answer as it grows."""
    names, requests = list(rows), list(rows.values())
    report = None if progress is None else (lambda i, text: progress(names[i], text))
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    start = time.perf_counter()
    gens = runner.generate_many(encoding, prompt, requests, options, cancel=cancel, progress=report)
    batch_ms = (time.perf_counter() - start) * 1e3
    prefill = {}
    for name, request in zip(names, requests) if measure_prefill else ():
        if cancel is not None and cancel.is_set():
            break
        one = runner.generate(encoding, prompt, request, GenerationOptions(max_new_tokens=1))
        prefill[name] = one.timings.get("prefill_ms")
    return gens, batch_ms, prefill


def answer_row(
    name: str,
    gen: Generation,
    reference: str,
    prefill: Mapping[str, float | None],
    batch_ms: float,
    *,
    vocabulary: Vocabulary,
    truth: Sequence[str] | None,
    wrong_attributes: Mapping[int, str] | None,
) -> dict[str, Any]:
    """The plain row of answer ``name`` ("full" or a method), marked against ``truth`` when known and
    against the full model's answer ``reference``; the full answer without truth is marked alone."""
    if name == "full" and truth is None:
        marks = mark_answer(gen.text, vocabulary)
    else:
        marks = mark_answer(gen.text, vocabulary, truth=truth, reference=reference, wrong_attributes=wrong_attributes)
    own = prefill.get(name)
    return {
        "text": gen.text,
        "n_visual_tokens": gen.n_visual_tokens,
        "n_new_tokens": len(gen.token_ids),
        "prefill_ms": own,
        "speedup": prefill["full"] / own if own and prefill.get("full") else None,
        "batch_ms": batch_ms,
        "same_as_full": same_answer(gen.text, reference, normalize=normalize_words),
        "overlap_with_full": word_overlap(gen.text, reference),
        **marks,
    }
