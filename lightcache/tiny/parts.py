"""What the families' tiny pipelines share: tokenizers built offline (no vocabulary file, no download), and a small
first-frame image for the image-to-video ones.

Each tokenizer is the real tokenizer class (so ``save_pretrained`` / ``from_pretrained`` round-trip it) over a small
BPE vocabulary learnt, through the class's own normaliser and pre-tokeniser, on :data:`TINY_CORPUS`: the tiny
model's words plus the words of the families' prompt templates, so that a template costs about as many tokens as
words and a prompt keeps one token per known word. The learning is deterministic: the same tokenizer every time.

Example:
    >>> from lightcache.tiny.parts import tiny_clip_tokenizer, tiny_image
    >>> tokenizer = tiny_clip_tokenizer()
    >>> tokenizer.convert_ids_to_tokens(tokenizer("a red circle").input_ids)
    ['<|startoftext|>', 'a</w>', 'red</w>', 'circle</w>', '<|endoftext|>']
    >>> tiny_image(32).size
    (32, 32)
"""

from __future__ import annotations

#: Words the tiny vocabularies are learnt on: the tiny model's words, then those of HunyuanVideo's,
#: HunyuanVideo-1.5's and Kandinsky 5's prompt templates (a template spelt letter by letter would crowd the prompt
#: out). Punctuation, digits and line breaks stay one character each, as in the real tokenizers.
TINY_CORPUS = (
    "a an the and on of with moving left right up down circle square triangle red green blue yellow white black "
    "gray background You are helpful assistant system user Describe video by detailing following aspects The main "
    "content theme color shape size texture quantity text spatial relationships objects Actions events behaviors "
    "temporal physical movement changes environment light style atmosphere camera angles movements transitions "
    "used in Text prompt engineer detail how moves or shakes zoom view angle whether it follows location characters "
    "their action dynamism presented Name visual professional footage generated some kind animation game scren "
    "effects postprocessing if they Pay attention to order key shown scene"
)

#: A chat template in the ChatML form Qwen2 tokenizers use (HunyuanVideo-1.5 calls ``apply_chat_template``).
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


#: The chat markers of Llama 3 that HunyuanVideo's prompt template uses.
LLAMA3_HEADER_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def _trained_bpe(tokenizer, special_tokens, alphabet=(), word_prefix="", end_of_word_suffix=""):
    """(vocab, merges) of a BPE model learnt on :data:`TINY_CORPUS` until every word is one token.

    The words go through ``tokenizer``'s own normaliser and pre-tokeniser one by one (a Metaspace pre-tokeniser
    would otherwise make the whole corpus one word), and again with ``word_prefix`` before them for byte-level
    tokenizers that keep a word's leading space. Classic BPE learning, most frequent pair first with ties broken
    by the pair itself, so the result never depends on hash order; a learnt word then encodes as one token.
    """
    backend = tokenizer._tokenizer
    words = TINY_CORPUS.split()
    pieces = []
    for text in words + [word_prefix + word for word in words if word_prefix]:
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces += [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
    counts: dict[tuple[str, ...], int] = {}
    for piece in pieces:
        symbols = (*piece[:-1], piece[-1] + end_of_word_suffix)
        counts[symbols] = counts.get(symbols, 0) + 1
    symbols_seen = {symbol for word in counts for symbol in word}
    suffixed = {char + end_of_word_suffix for char in alphabet} if end_of_word_suffix else set()
    vocab = {token: index for index, token in enumerate(special_tokens)}
    for symbol in sorted(symbols_seen | set(alphabet) | suffixed):
        vocab.setdefault(symbol, len(vocab))
    merges = []
    while True:
        pairs: dict[tuple[str, str], int] = {}
        for word, count in counts.items():
            for pair in zip(word, word[1:]):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        counts = {_merged(word, best): count for word, count in counts.items()}
    return vocab, merges


def _merged(word, pair):
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def tiny_llama_tokenizer():
    """A ``LlamaTokenizer`` (Metaspace BPE, ``<unk>`` / ``<s>`` / ``</s>`` and Llama 3's header markers), padding
    with ``<unk>``."""
    from transformers import LlamaTokenizer

    specials = ("<unk>", "<s>", "</s>", *LLAMA3_HEADER_TOKENS)
    vocab, merges = _trained_bpe(LlamaTokenizer(), specials, _printable())
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, pad_token="<unk>")
    # HunyuanVideo's prompt template is written with Llama 3's chat markers: whole tokens, as in its tokenizer.
    tokenizer.add_special_tokens({"additional_special_tokens": list(LLAMA3_HEADER_TOKENS)})
    return tokenizer


def tiny_clip_tokenizer():
    """A ``CLIPTokenizer`` (lower-casing BPE with ``</w>`` word ends, start and end tokens), 77 tokens long."""
    from transformers import CLIPTokenizer

    specials = ("<|startoftext|>", "<|endoftext|>")
    vocab, merges = _trained_bpe(CLIPTokenizer(), specials, _printable(), end_of_word_suffix="</w>")
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def tiny_qwen2_tokenizer():
    """A ``Qwen2Tokenizer`` (byte-level BPE) with a ChatML chat template."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    vocab, merges = _trained_bpe(Qwen2Tokenizer(), specials, pre_tokenizers.ByteLevel.alphabet(), word_prefix=" ")
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, chat_template=CHATML_TEMPLATE)
    # The chat markers must stay whole tokens, never be split into characters.
    tokenizer.add_special_tokens({"additional_special_tokens": list(specials[1:])})
    return tokenizer


def tiny_gemma_tokenizer():
    """A ``GemmaTokenizer`` (BPE over ``\u2581``-joined words, byte fallback), 1024 tokens long."""
    from transformers import GemmaTokenizer

    specials = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
    vocab, merges = _trained_bpe(GemmaTokenizer(), specials, _printable(), word_prefix=" ")
    return GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=1024)


def tiny_t5_tokenizer(model_max_length: int = 512):
    """A ``T5Tokenizer`` (Unigram over Metaspace pieces, ``<pad>`` / ``</s>`` / ``<unk>``): each corpus word one piece,
    anything else spelt letter by letter."""
    from transformers import T5Tokenizer

    words = dict.fromkeys(TINY_CORPUS.split())
    # Unigram picks the most likely split: a whole word (log-probability -1) beats its letters (-10 each).
    vocab = ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + word, -1.0) for word in words]
             + [("\u2581", -10.0)] + [(char, -10.0) for char in _printable()])
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def _printable():
    """Every printable ASCII character and the line break, so that no prompt in plain English maps to the unknown
    token."""
    import string

    return tuple(string.ascii_letters + string.digits + string.punctuation + "\n")


def tiny_image(size: int = 32):
    """A ``size`` x ``size`` RGB gradient (red across, green down, blue constant) to condition image-to-video on."""
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    rgb = np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 96, np.uint8)],
                   -1)
    return Image.fromarray(rgb, "RGB")
