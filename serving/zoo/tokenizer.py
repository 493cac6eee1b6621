"""Character-level tokenizer for the zoo models, with the chat template baked in.

Why characters: the tasks are digits and letters, so one token per character keeps every
digit aligned (which is what makes arithmetic learnable by tiny models) and the vocabulary
tiny. `<think>` and `</think>` are single tokens (a reasoning budget counts and forces them
at the token level); like Qwen3 they are *not* special, so they survive
`skip_special_tokens` and vLLM's reasoning parser can find them in the output.

Chat format (Qwen3-style thinking switch, chat_template kwarg `enable_thinking`):

    <s><|system|>...<|user|>...<|assistant|><think></think>ANSWER</s>       (default)
    <s><|system|>...<|user|>...<|assistant|><think>SCRATCH</think>ANSWER</s> (thinking)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, SYSTEM, USER, ASSISTANT)
THINK_TOKENS: tuple[str, ...] = (THINK_OPEN, THINK_CLOSE)
# Newline plus printable ASCII: everything the task suite writes.
CHARS: tuple[str, ...] = ("\n", *(chr(i) for i in range(32, 127)))
VOCAB: tuple[str, ...] = (*SPECIAL_TOKENS, *THINK_TOKENS, *CHARS)
# The model's embedding table is padded to a round size; ids past len(VOCAB) are unused.
MODEL_VOCAB_SIZE = 128
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

#: The assistant's turn opened for generation (shared by every zoo chat template).
GENERATION_PROMPT = (
    "{%- if add_generation_prompt -%}<|assistant|>"
    "{%- if enable_thinking is defined and enable_thinking -%}<think>"
    "{%- else -%}<think></think>{%- endif -%}"
    "{%- endif -%}"
)

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}<|system|>{{- message['content'] -}}"
    "{%- elif message['role'] == 'user' -%}<|user|>{{- message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}<|assistant|>"
    "{%- if '</think>' not in message['content'] -%}<think></think>{%- endif -%}"
    "{{- message['content'] -}}</s>"
    "{%- endif -%}"
    "{%- endfor -%}"
    + GENERATION_PROMPT
)


def build_tokenizer(chat_template: str = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """The zoo tokenizer: char-level WordLevel model, fused decoding, chat template set
    (zoo-tools's renders tools: `serving.zoo.tools.TOOLS_CHAT_TEMPLATE`)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    assert vocab[PAD] == PAD_ID and vocab[BOS] == BOS_ID and vocab[EOS] == EOS_ID
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character is its own pre-token; WordLevel then maps it to its id.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=1024,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = chat_template
    return tok
