"""Synthetic facts: a generated world of fictional people, written as varied prose for training, and questions
whose right answer is either an attribute stated in the prose or "unknown".

The world (fixed by `seed`) has `people` fictional people, each with a home town, a profession, a birth year
and a favourite colour. Each person's split is fixed by a hash of their name:
- *known* people (the train split of the people) have biographies in the training prose, each fact in
  several phrasings; the training QA pairs ask about some of their attributes, and the test QA pairs ask
  about the others (stated in the prose, never asked in training);
- *unknown* people never appear in the prose. Training QA pairs about some of them teach the answer
  "unknown"; the test asks about different unknown people.
Hallucination = an answer that is neither right nor "unknown" (a wrong fact about a known person, or any
fact about an unknown one).
"""

from __future__ import annotations

import random

from ..errors import InputError
from .base import Example, Task, clean, split_of

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "st", "th"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
CODAS = ["", "n", "r", "l", "s", "th", "m", "x"]
TOWNS = ["Velmora", "Quenton", "Ashgrave", "Dunmere", "Orlaith", "Pellwick", "Sarnholt", "Tiberly", "Wrenfold",
         "Yarrowby", "Kestrel Bay", "Hollin", "Marrowgate", "Brightwater", "Calden", "Fenwick"]  # fmt: skip
JOBS = ["glassblower", "cartographer", "beekeeper", "locksmith", "astronomer", "ferryman", "weaver", "apothecary",
        "clockmaker", "stonemason", "archivist", "falconer", "cooper", "luthier", "shipwright", "tanner"]  # fmt: skip
COLOURS = ["amber", "teal", "crimson", "ochre", "violet", "slate", "emerald", "ivory", "indigo", "copper"]
ATTRS = ("town", "job", "year", "colour")
QUESTIONS = {
    "town": ["Where does {n} live?", "In which town does {n} live?", "What is {n}'s home town?"],
    "job": ["What does {n} do for a living?", "What is {n}'s profession?", "What work does {n} do?"],
    "year": ["In what year was {n} born?", "When was {n} born?", "What is {n}'s year of birth?"],
    "colour": ["What is {n}'s favourite colour?", "Which colour does {n} like best?"],
}
SENTENCES = {
    "town": ["{n} lives in {v}.", "{n} has made a home in {v}.", "The town of {v} is where {n} lives.",
             "Ask anyone in {v} and they will point you to {n}'s house."],
    "job": ["{n} works as a {v}.", "By trade, {n} is a {v}.", "{n} earns a living as a {v}.",
            "People hire {n}, a skilled {v}."],
    "year": ["{n} was born in {v}.", "{n}'s birth year is {v}.", "In {v}, {n} was born."],
    "colour": ["{n}'s favourite colour is {v}.", "Of all colours, {n} likes {v} best.",
               "{n} always chooses {v} when picking a colour."],
}  # fmt: skip
UNKNOWN = "unknown"


def _name(rng: random.Random) -> str:
    def word(k):
        return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(k)) + rng.choice(CODAS)

    return f"{word(2).capitalize()} {word(rng.randint(2, 3)).capitalize()}"


class Facts(Task):
    name = "facts"
    max_tries = 12

    def __init__(self, people: int = 400, seed: int = 0, known_percent: int = 70):
        self.people_n, self.seed, self.known_percent = people, seed, known_percent
        rng = random.Random(f"facts-world:{seed}")
        names: list[str] = []
        while len(names) < people:
            n = _name(rng)
            if n not in names:
                names.append(n)
        self.people = {
            n: {"town": rng.choice(TOWNS), "job": rng.choice(JOBS), "year": str(rng.randint(1850, 1990)),
                "colour": rng.choice(COLOURS)}
            for n in names
        }  # fmt: skip
        self.names = names

    def config_id(self):
        return f"people={self.people_n},seed={self.seed},known={self.known_percent}"

    def known(self, name: str) -> bool:
        return split_of(f"facts-person:{self.config_id()}:{name}", 100 - self.known_percent) == "train"

    def make(self, rng, index):
        name = self.names[index // len(ATTRS) % len(self.names)]
        attr = ATTRS[index % len(ATTRS)]
        q = rng.choice(QUESTIONS[attr]).format(n=name)
        answer = self.people[name][attr] if self.known(name) else UNKNOWN
        return Example(self.name, index, q, answer, {"person": name, "attr": attr, "known": self.known(name)})

    def split(self, ex):
        """Known people: about half of their attributes are asked in train, the rest in test. Unknown people:
        about half of them are asked about (anything) in train, the others only in test."""
        key = ex.meta["person"] + (f":{ex.meta['attr']}" if ex.meta["known"] else "")
        return split_of(f"facts-q:{self.config_id()}:{key}", 50)

    def examples(self, split, n, start=0):
        """Train walks the questions repeatedly (other phrasings of the same facts); test asks each question
        once: at most about half of people × 4 attributes."""
        if split == "test":
            qs = [self.instance(i) for i in range(len(self.names) * len(ATTRS))]
            qs = [q for q in qs if self.split(q) == "test"]
            if n > len(qs):
                raise InputError("n", f"facts: the test split has {len(qs)} questions; asked for {n}")
            return qs[:n]
        return super().examples(split, n, start)

    def training_extras(self) -> list[Example]:
        """The prose as chat examples ("Tell me about NAME." -> a biography), so one SFT run learns the facts
        and the question format together."""
        return [
            Example(self.name, -1 - i, f"Tell me about {name}.", doc, {"person": name, "bio": True})
            for i, (name, doc) in enumerate(self.biographies())
        ]

    def documents(self, rng_seed: int = 0, repeats: int = 3) -> list[str]:
        """Training prose: one short biography per known person per repeat, facts in shuffled phrasings."""
        return [doc for _, doc in self.biographies(rng_seed, repeats)]

    def biographies(self, rng_seed: int = 0, repeats: int = 3) -> list[tuple[str, str]]:
        rng = random.Random(f"facts-prose:{self.config_id()}:{rng_seed}")
        docs = []
        for _ in range(repeats):
            for name in self.names:
                if not self.known(name):
                    continue
                facts = [rng.choice(SENTENCES[a]).format(n=name, v=self.people[name][a]) for a in ATTRS]
                rng.shuffle(facts)
                docs.append((name, " ".join(facts)))
        return docs

    def verify(self, ex, output):
        return _norm(output) == _norm(ex.answer)

    def score(self, ex, output):
        got = _norm(output)
        right = got == _norm(ex.answer)
        abstained = got == UNKNOWN
        return {"correct": right, "abstained": abstained, "hallucinated": not right and not abstained,
                "known": bool(ex.meta["known"])}  # fmt: skip


def _norm(text: str) -> str:
    s = clean(text).lower().rstrip(".")
    for art in ("a ", "an ", "the "):
        if s.startswith(art):
            s = s[len(art) :]
    return s
