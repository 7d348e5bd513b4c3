"""Prompts of real English for greedy-equality checks on real engines."""

from __future__ import annotations

import functools
import random

from transformers import AutoTokenizer

from kvmesh import models

SENTENCES = [
    "The river rose after three days of rain, and the village moved its boats to higher ground.",
    "A good bread needs flour, water, salt, yeast and, above all, time.",
    "The committee met on Tuesday to review the budget for the new library.",
    "Light from the nearest star other than the Sun takes a little over four years to reach us.",
    "She wrote the first chapter in a week and spent a year rewriting it.",
    "Trains leave the central station every twenty minutes until midnight.",
    "The old bridge was closed for repairs, so traffic went through the tunnel.",
    "Bees visit thousands of flowers to make a single spoonful of honey.",
]


@functools.cache
def english(seed: str, length: int) -> list[int]:
    """`length` token ids of the default model: plain English drawn by `seed`, then a question.
    Greedy answers to real text are confident, so two correct KV computations agree (random token
    ids give near-ties that bf16 rounding differences between computation orders can flip)."""
    tokenizer = AutoTokenizer.from_pretrained(str(models.resolve(models.DEFAULT_MODEL)))
    rng = random.Random(seed)
    question = tokenizer.encode("\nQuestion: what happened to the bridge, and why?\nAnswer:", add_special_tokens=False)
    ids: list[int] = []
    while len(ids) < length - len(question):
        ids += tokenizer.encode(" " + rng.choice(SENTENCES), add_special_tokens=False)
    return ids[: length - len(question)] + question
