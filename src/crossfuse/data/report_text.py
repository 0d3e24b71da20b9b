"""The radiology report grammar of the chest films: templated reports, tokens and the vocabulary.

`write_report` turns a study's findings into a templated but varied report ("There is an opacity
in the right lower zone. No pleural effusion. Heart size is normal."): lung findings, then pleura,
heart and bones, with negative sentences where normal. `tokenize`/`detokenize` split and join
reports; `Vocabulary` maps tokens to ids.

Shapes: Vocabulary.encode(text) -> list[int] (BOS ... EOS, padded to ``max_len`` if given).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

if TYPE_CHECKING:
    from crossfuse.data.radiographs import Finding

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


# --------------------------------------------------------------------------- reports

_POSITIVE = {
    "opacity": (
        "There is an opacity in the {side} {zone} zone.",
        "An opacity is seen in the {side} {zone} zone.",
        "{Side} {zone} zone opacity.",
    ),
    "nodule": (
        "There is a nodule in the {side} {zone} zone.",
        "A small nodule is seen in the {side} {zone} zone.",
        "{Side} {zone} zone nodule.",
    ),
    "pleural effusion": (
        "There is a {side} pleural effusion.",
        "Small {side} pleural effusion.",
        "Blunting of the {side} costophrenic angle, consistent with pleural effusion.",
    ),
    "cardiomegaly": ("The heart is enlarged.", "Cardiomegaly.", "Heart size is enlarged."),
    "rib fracture": (
        "There is a fracture of a {side} {zone} rib.",
        "A {side} {zone} rib fracture is seen.",
        "Fracture of a {side} rib in the {zone} zone.",
    ),
}
_NEGATIVE = {
    "lungs": ("The lungs are clear.", "No focal opacity.", "Lungs are clear."),
    "pleural effusion": ("No pleural effusion.", "There is no pleural effusion.", "No effusion."),
    "cardiomegaly": ("Heart size is normal.", "The heart is normal in size.", "Normal heart size."),
    "rib fracture": ("No rib fracture.", "No acute bony abnormality."),
}


def write_report(rng: np.random.Generator, findings: list[Finding]) -> str:
    """A templated report: lung findings, then pleura, heart and bones; negatives where normal."""
    by_kind = {f.kind: f for f in findings}

    def positive(f: Finding) -> str:
        side, _, zone = f.location.partition(" ")
        template = str(rng.choice(_POSITIVE[f.kind]))
        return template.format(side=side, Side=side.capitalize(), zone=zone)

    sentences = [positive(by_kind[k]) for k in ("opacity", "nodule") if k in by_kind]
    if not sentences:
        sentences.append(str(rng.choice(_NEGATIVE["lungs"])))
    for kind in ("pleural effusion", "cardiomegaly"):
        sentences.append(positive(by_kind[kind]) if kind in by_kind else str(rng.choice(_NEGATIVE[kind])))
    if "rib fracture" in by_kind:
        sentences.append(positive(by_kind["rib fracture"]))
    elif rng.random() < 0.5:
        sentences.append(str(rng.choice(_NEGATIVE["rib fracture"])))
    return " ".join(sentences)


# --------------------------------------------------------------------------- vocabulary

_TOKEN = re.compile(r"[a-z]+|[.,]")


def tokenize(text: str) -> list[str]:
    """Lower-case words and the punctuation marks ``.`` and ``,`` as separate tokens."""
    return _TOKEN.findall(text.lower())


def detokenize(words: list[str]) -> str:
    """Join tokens back into sentences: no space before punctuation, capitalised sentences."""
    text = ""
    capital = True
    for word in words:
        if word in ".,":
            text += word
            capital = word == "."
            continue
        text += (" " if text else "") + (word.capitalize() if capital else word)
        capital = False
    return text


class Vocabulary:
    """Token <-> id map with ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3 first.

    Shapes: encode(text) -> list[int] (BOS ... EOS, padded to ``max_len`` if given);
    decode(ids) -> text (stops at EOS, skips PAD/BOS).
    """

    def __init__(self, tokens: list[str]) -> None:
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"tokens: expected to start with {list(SPECIALS)}, got {tokens[: len(SPECIALS)]}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("tokens: expected unique tokens, got duplicates")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, texts: list[str]) -> Vocabulary:
        """Every token seen in ``texts``, sorted, after the special tokens."""
        words = sorted({w for text in texts for w in tokenize(text)})
        return cls(list(SPECIALS) + words)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        ids = [self.bos_id] + [self.index.get(w, self.unk_id) for w in tokenize(text)] + [self.eos_id]
        if max_len is not None:
            if len(ids) > max_len:
                raise ValueError(f"max_len: report needs {len(ids)} tokens with BOS/EOS, got max_len={max_len}")
            ids += [self.pad_id] * (max_len - len(ids))
        return ids

    def words(self, ids: list[int] | Tensor) -> list[str]:
        """Tokens of ``ids`` up to EOS, without PAD/BOS."""
        out = []
        for i in ids.tolist() if isinstance(ids, Tensor) else ids:
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                out.append(self.tokens[i])
        return out

    def decode(self, ids: list[int] | Tensor) -> str:
        return detokenize(self.words(ids))
