"""A synthetic chat dataset with separable skills, made in code (no download).

Skills, each with a short answer so exact-match accuracy is meaningful:

- ``arithmetic``: "What is 7 + 5?" -> "12" (one-digit sums and differences, so tiny models
  can learn them in seconds), and "Name two digits that add up to 7." -> "3 and 4" (any
  ordered pair of digits with that sum is right)
- ``strings``: "Reverse the word: lamp" -> "pmal", "Uppercase the word: lamp" -> "LAMP"
- ``facts``: recall of a generated fact table: "What is the capital of Velorin?" -> "Tazku",
  and "Name a city in Velorin." -> any of its three cities (the capital and two others)

Half of the arithmetic and facts questions thus have several right answers: the record's
answer is one drawn at random, and ``answers`` lists all of them (fusechat.stages.evaluate accepts
any). There a model that learned the skill spreads its probability over the right answers,
which a single sampled reply cannot show but a source's distribution can: this is where the
fusion signal carries more than the gold reply (docs/pipeline.md, "The demo").

The fact table and every example come from a seeded generator, so a dataset is a pure
function of (n, seed, mix). Records use the ``messages`` shape plus ``skill``, ``answer``
and ``answers`` keys, which the loader keeps as metadata.
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


def fact_table(seed=0, n=40):
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


def city_table(facts):
    """{country: [capital, city, city]}: two more invented cities per country, distinct from
    every name in ``facts`` (a pure function of the fact table)."""
    rng = np.random.default_rng(len(facts) + 2000)
    used = set(facts) | set(facts.values())
    table = {}
    for country in sorted(facts):
        cities = [facts[country]]
        while len(cities) < 3:
            city = _pseudo_word(rng, 2).capitalize()
            if city not in used:
                used.add(city)
                cities.append(city)
        table[country] = cities
    return table


def _digit_pairs(total):
    return [f"{a} and {total - a}" for a in range(10) if 0 <= total - a <= 9]


def make_example(skill, rng, facts, cities=None):
    answers = None
    if skill == "arithmetic":
        a, b = int(rng.integers(0, 10)), int(rng.integers(0, 10))
        kind = rng.random()
        if kind < 0.25:
            q, ans = f"What is {a} + {b}?", str(a + b)
        elif kind < 0.5:
            a, b = max(a, b), min(a, b)
            q, ans = f"What is {a} - {b}?", str(a - b)
        else:
            total = int(rng.integers(1, 18))
            answers = _digit_pairs(total)
            q, ans = f"Name two digits that add up to {total}.", str(rng.choice(answers))
    elif skill == "strings":
        w = str(rng.choice(_WORDS))
        if rng.random() < 0.5:
            q, ans = f"Reverse the word: {w}", w[::-1]
        else:
            q, ans = f"Uppercase the word: {w}", w.upper()
    elif skill == "facts":
        country = str(rng.choice(sorted(facts)))
        if rng.random() < 0.5:
            q, ans = f"What is the capital of {country}?", facts[country]
        else:
            answers = (cities or city_table(facts))[country]
            q, ans = f"Name a city in {country}.", str(rng.choice(answers))
    else:
        raise ValueError(f"skill={skill!r}: expected one of {SKILLS}")
    return {"messages": [{"role": "user", "content": q},
                         {"role": "assistant", "content": ans}],
            "skill": skill, "answer": ans, "answers": answers or [ans]}


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
    cities = city_table(facts)
    return [make_example(names[rng.choice(len(names), p=p)], rng, facts, cities)
            for _ in range(n)]
