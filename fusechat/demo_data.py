"""A synthetic chat dataset with separable skills, made in code (no download).

Skills, each with a short exact answer so exact-match accuracy is meaningful:

- ``arithmetic``: "What is 7 + 5?" -> "12" (one-digit sums and differences, so tiny models
  can learn them in seconds)
- ``strings``: "Reverse the word: lamp" -> "pmal", "Uppercase the word: lamp" -> "LAMP"
- ``facts``: recall of a generated fact table: "What is the capital of Velorin?" -> "Tazku"

The fact table and every example come from a seeded generator, so a dataset is a pure
function of (n, seed, mix). Records use the ``messages`` shape plus ``skill`` and ``answer``
keys, which the loader keeps as metadata.
"""
import numpy as np

SKILLS = ("arithmetic", "strings", "facts")
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr",
           "st", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_WORDS = ["lamp", "river", "stone", "cloud", "apple", "tiger", "music", "paper", "green",
          "honey", "light", "storm", "bread", "chair", "plant", "smile", "ocean", "table",
          "mouse", "glass", "house", "night", "sugar", "water"]


def _pseudo_word(rng, syllables):
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))


def fact_table(seed=0, n=24):
    """{country: capital} with invented, distinct names."""
    rng = np.random.default_rng(seed + 1000)
    table, used = {}, set()
    while len(table) < n:
        country = _pseudo_word(rng, 3).capitalize()
        capital = _pseudo_word(rng, 2).capitalize()
        if country in used or capital in used:
            continue
        used.update((country, capital))
        table[country] = capital
    return table


def make_example(skill, rng, facts):
    if skill == "arithmetic":
        a, b = int(rng.integers(0, 10)), int(rng.integers(0, 10))
        if rng.random() < 0.5:
            q, ans = f"What is {a} + {b}?", str(a + b)
        else:
            a, b = max(a, b), min(a, b)
            q, ans = f"What is {a} - {b}?", str(a - b)
    elif skill == "strings":
        w = str(rng.choice(_WORDS))
        if rng.random() < 0.5:
            q, ans = f"Reverse the word: {w}", w[::-1]
        else:
            q, ans = f"Uppercase the word: {w}", w.upper()
    elif skill == "facts":
        country = str(rng.choice(sorted(facts)))
        q, ans = f"What is the capital of {country}?", facts[country]
    else:
        raise ValueError(f"skill={skill!r}: expected one of {SKILLS}")
    return {"messages": [{"role": "user", "content": q},
                         {"role": "assistant", "content": ans}],
            "skill": skill, "answer": ans}


def make_dataset(n, seed=0, mix=None, facts=None):
    """n records; ``mix`` maps skill -> relative weight (default: uniform)."""
    mix = mix or {s: 1.0 for s in SKILLS}
    for s in mix:
        if s not in SKILLS:
            raise ValueError(f"mix: unknown skill {s!r}: expected one of {SKILLS}")
    names = sorted(mix)
    p = np.array([mix[s] for s in names], dtype=np.float64)
    if (p < 0).any() or p.sum() <= 0:
        raise ValueError("mix: weights must be non-negative with a positive sum")
    p /= p.sum()
    rng = np.random.default_rng(seed)
    facts = facts if facts is not None else fact_table()
    return [make_example(names[rng.choice(len(names), p=p)], rng, facts) for _ in range(n)]
