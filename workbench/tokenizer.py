"""The digit-level tokenizer of the bundled toy models.

Every character is one token, so every answer digit is one token by construction. The
tokenizer is built with `tokenizers` and saved as an ordinary `tokenizer.json` beside the
checkpoint, so TransformerLens and `transformers` load it like any other.

Invariant: BOS is added by the tokenizer's post-processor (transformers 5 does not save
`add_bos_token`), so TransformerLens prepends exactly one BOS; our training code uses the same
tokenizer call and therefore the same BOS convention.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
SPECIALS = (BOS, EOS, PAD, UNK)
# Digits, the operators our tasks use, separators, and lower-case letters for task markers.
CHARACTERS = tuple("0123456789+-*=><,;:| ") + tuple("abcdefghijklmnopqrstuvwxyz")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A fast tokenizer with one token per character and BOS added by the post-processor."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    """Write tokenizer.json and its config into a checkpoint directory."""
    tokenizer.save_pretrained(str(directory))
