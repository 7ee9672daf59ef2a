"""A tiny random-weight LLaMA model in GGUF, written in well under a second.

2 layers, 64 wide, a few hundred tokens (SentencePiece-style with byte
fallback, a few words with multi-byte characters).  Its greedy output is
the same on every build, so tests may assert exact text on it.  The output
rows of control and byte tokens are zero, so that greedy text is words.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

WORDS = (
    "the a of and to in is was it that he she they we you on with as for his her "
    "at by from be this have or had not but what all were when there can an your "
    "which their said if do will each about how up out them then many some so "
    "time would other into has more two like him see could no make than first "
    "been its who now people my made over did down only way find use may water "
    "long little very after words called just where most know once upon king "
    "café naïve über crème 日本 語 ünïcödé"
).split()

N_EMBD, N_LAYER, N_HEAD, N_FF, CONTEXT = 64, 2, 4, 128, 2048

# ChatML, as SmolLM2's and many others': with chat=True the model carries it.
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]


def vocabulary(chat: bool = False) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + (CHAT_TOKENS if chat else [])
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + \
        [gguf.TokenType.CONTROL] * (len(CHAT_TOKENS) if chat else 0)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["\u2581" + w for w in WORDS] + list("abcdefghijklmnopqrstuvwxyz.,!?") + ["\u2581"]
    for piece in pieces:
        if piece not in tokens:
            tokens.append(piece)
            types.append(gguf.TokenType.NORMAL)
    first_word = 3 + (len(CHAT_TOKENS) if chat else 0) + 256
    scores = [0.0] * first_word + [-float(i) for i in range(len(tokens) - first_word)]
    return tokens, scores, [int(t) for t in types]


def write_tiny_model(path: str | Path, seed: int = 1234, chat: bool = False, end_of_turn: float = 0.0) -> Path:
    """chat: with <|im_start|>, <|im_end|> and a ChatML template.  end_of_turn:
    how strongly <|im_end|> may be chosen (0: never, as other control tokens;
    about 3: now and then, so that a reply can end by itself)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary(chat)
    n_vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("llamafs-tiny")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    def tensor(name: str, *shape: int, scale: float = 0.2) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    tensor("token_embd.weight", n_vocab, N_EMBD, scale=1.0)
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    output = (rng.standard_normal((n_vocab, N_EMBD)) * 1.0).astype(np.float32)
    output[: 3 + (len(CHAT_TOKENS) if chat else 0) + 256] = 0.0  # never choose control or byte tokens greedily
    if chat:
        writer.add_chat_template(CHATML)
        if end_of_turn:
            output[tokens.index("<|im_end|>")] = rng.standard_normal(N_EMBD) * end_of_turn
    writer.add_tensor("output.weight", output)
    for i in range(N_LAYER):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for part in ("q", "k", "v", "output"):
            tensor(f"blk.{i}.attn_{part}.weight", N_EMBD, N_EMBD)
        tensor(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    import sys

    print(write_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf"))
