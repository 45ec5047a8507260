"""A CLIP BPE tokenizer whose merges make every word of the domain one token.

CLIP's pre-tokenizer splits digits one by one, so "42" is two tokens; the byte alphabet stays in
the vocabulary, so any other text still tokenizes (character by character). It is a stock
``CLIPTokenizer`` (saved as vocab.json + merges.txt), so the teacher loads like SD's.
"""

from __future__ import annotations

from typing import Any

from prunekit_plugins.domain.vocab import WORDS

MAX_LENGTH = 16  # the longest prompt is 10 words + start and end tokens


def word_merges(words: tuple[str, ...] = WORDS) -> list[tuple[str, str]]:
    """Left-to-right merge chains: g+r, gr+e, gre+e, gree+n</w> for "green"."""
    merges: list[tuple[str, str]] = []
    for word in sorted(set(words), key=lambda w: (-len(w), w)):
        pieces = [*word[:-1], word[-1] + "</w>"]
        prefix = pieces[0]
        for piece in pieces[1:]:
            pair = (prefix, piece)
            if pair not in merges:
                merges.append(pair)
            prefix += piece
    return merges


def build_domain_tokenizer(max_length: int = MAX_LENGTH) -> Any:
    from transformers import CLIPTokenizer

    from prunekit.tiny import SPECIAL_TOKENS, _byte_alphabet

    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    merges = word_merges()
    for token in [*alphabet, *(c + "</w>" for c in alphabet), *(a + b for a, b in merges), *SPECIAL_TOKENS]:
        vocab.setdefault(token, len(vocab))
    # tokenizers' BPE takes merges as (left, right) pairs; transformers annotates them as list[str].
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)  # type: ignore[arg-type]
