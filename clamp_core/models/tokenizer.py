"""Text inputs of the CLAMP text encoder: instruction words, each object's name and normalised
position, and the integer task progress, as fixed-length id / number arrays (numpy, no torch).

Words map to ids through a stable hash, so no vocabulary file has to be downloaded or shipped;
collisions in a 4096-entry table are rare for task vocabularies of a few hundred words.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

PAD, CLS, SEP, POS, PROGRESS = 0, 1, 2, 3, 4
"""Special ids: padding, sequence summary, separator, an object position slot, progress slot."""
NUM_SPECIAL = 8

_WORD = re.compile(r"[a-z0-9]+")


def word_id(word: str, vocab_size: int) -> int:
    """Stable id of a lower-case word in [NUM_SPECIAL, vocab_size)."""
    return NUM_SPECIAL + zlib.crc32(word.encode()) % (vocab_size - NUM_SPECIAL)


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words; ``can_opener`` -> ``can``, ``opener``."""
    return _WORD.findall(text.lower().replace("_", " "))


def tokenize(
    instruction: str,
    object_names: Sequence[str],
    object_positions: np.ndarray,
    progress: int,
    vocab_size: int = 4096,
    max_tokens: int = 48,
    max_progress: int = 16,
) -> dict[str, np.ndarray]:
    """``[CLS] instruction [SEP] (name words [POS])* [PROGRESS]``, padded to ``max_tokens``.

    Returns ``ids`` (L,) int64, ``numbers`` (L, 3) float32 holding each object's normalised
    position at its POS slot, ``progress`` () int64 (clipped to max_progress-1) and ``mask``
    (L,) bool (True = real token). Truncation drops instruction words first so every object and
    the progress slot survive whenever they fit.
    """
    pos = np.asarray(object_positions, np.float32).reshape(-1, 3)
    if len(pos) != len(object_names):
        raise ValueError(f"tokenize: {len(object_names)} object names but {len(pos)} positions")
    if vocab_size <= NUM_SPECIAL:
        raise ValueError(f"tokenize: vocab_size must exceed {NUM_SPECIAL}")
    obj_ids: list[int] = []
    obj_numbers: list[np.ndarray] = []
    zero = np.zeros(3, np.float32)
    for name, p in zip(object_names, pos, strict=True):
        for w in words(name):
            obj_ids.append(word_id(w, vocab_size))
            obj_numbers.append(zero)
        obj_ids.append(POS)
        obj_numbers.append(np.clip(np.nan_to_num(p), -1.5, 1.5))
    tail_ids = [SEP, *obj_ids, PROGRESS]
    tail_numbers = [zero, *obj_numbers, zero]
    room = max_tokens - 1 - len(tail_ids)
    instr = [word_id(w, vocab_size) for w in words(instruction)][: max(room, 0)]
    ids = [CLS, *instr, *tail_ids][:max_tokens]
    numbers = [zero] * (1 + len(instr)) + tail_numbers
    numbers = numbers[:max_tokens]
    out_ids = np.zeros(max_tokens, np.int64)
    out_num = np.zeros((max_tokens, 3), np.float32)
    out_ids[: len(ids)] = ids
    out_num[: len(numbers)] = np.stack(numbers)
    return {
        "ids": out_ids,
        "numbers": out_num,
        "progress": np.int64(min(max(int(progress), 0), max_progress - 1)),
        "mask": out_ids != PAD,
    }
