#!/usr/bin/env python3
"""Convert a llama-architecture GGUF file into a Hugging Face-layout directory.

Usage: gguf_to_hf.py GGUF OUTDIR

Writes into OUTDIR (created if missing):
  model.safetensors       every tensor dequantized to float32, HF names, (out, in) shapes
  config.json             LlamaForCausalLM config from the GGUF metadata
  generation_config.json  bos / eos ids
  tokenizer.json          byte-level BPE built from tokenizer.ggml.tokens + merges
  tokenizer_config.json   chat template, bos / eos strings, add_bos_token

Used by tests/support/fetch-models.sh to give the safetensors loader real weights
(SmolLM2-135M-Instruct) that must produce the same greedy ids as the GGUF path.

Two traps this handles:
  * GGUF lists tensor dims innermost first; the arrays GGUFReader and
    gguf.quants.dequantize return are already numpy row-major (out, in), and are
    asserted to be so below.
  * llama.cpp's converter permutes the rows of Q and K so that RoPE can rotate
    adjacent pairs (interleaved). HF Llama rotates halves (rotate_half), so the
    rows are put back: reshape (n, head_dim/2, 2, in) -> swap axes 1,2 -> reshape.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

TOKEN_TYPE_CONTROL = 3

BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
TOP_RE = re.compile(r"^([a-z_]+)\.(weight|bias)$")


def die(msg: str) -> None:
    print(f"gguf_to_hf: error: {msg}", file=sys.stderr)
    sys.exit(1)


def field(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def required(reader: GGUFReader, key: str):
    v = field(reader, key)
    if v is None:
        die(f"GGUF metadata has no {key}")
    return v


def clean_f32(x: float) -> float:
    """Shortest decimal that round-trips the stored f32 (9.99999974e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


def hf_name(gguf_name: str) -> str:
    m = BLOCK_RE.match(gguf_name)
    if m:
        layer, part, kind = m.groups()
        if part not in BLOCK_NAMES:
            die(f"unknown block tensor {gguf_name}")
        return f"model.layers.{layer}.{BLOCK_NAMES[part]}.{kind}"
    m = TOP_RE.match(gguf_name)
    if m and m.group(1) in TOP_NAMES:
        return f"{TOP_NAMES[m.group(1)]}.{m.group(2)}"
    die(f"unknown tensor {gguf_name}")
    raise AssertionError  # unreachable


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf LlamaModel.permute (HF -> GGUF row order)."""
    out = w.shape[0]
    return w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of permute (GGUF -> HF row order)."""
    out = w.shape[0]
    return w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def self_check_permute() -> None:
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)
    assert np.array_equal(unpermute(permute(w, 4), 4), w)
    assert np.array_equal(permute(unpermute(w, 4), 4), w)
    # GGUF row order is (pair i, element j) -> HF row j * (head_dim/2) + i:
    # HF rows 0 and head_dim/2 form the first rotated pair and sit next to each other in GGUF.
    g = permute(w, 4)
    assert np.array_equal(g[0], w[0]) and np.array_equal(g[1], w[4])


def convert_tensors(reader: GGUFReader, cfg: dict) -> dict[str, np.ndarray]:
    n_head = cfg["num_attention_heads"]
    n_kv = cfg["num_key_value_heads"]
    head_dim = cfg["head_dim"]
    hidden = cfg["hidden_size"]
    ffn = cfg["intermediate_size"]
    vocab = cfg["vocab_size"]
    expected = {
        "attn_q": (n_head * head_dim, hidden),
        "attn_k": (n_kv * head_dim, hidden),
        "attn_v": (n_kv * head_dim, hidden),
        "attn_output": (hidden, n_head * head_dim),
        "ffn_gate": (ffn, hidden),
        "ffn_up": (ffn, hidden),
        "ffn_down": (hidden, ffn),
        "attn_norm": (hidden,),
        "ffn_norm": (hidden,),
        "token_embd": (vocab, hidden),
        "output": (vocab, hidden),
        "output_norm": (hidden,),
    }
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        # GGUF dims are innermost first; numpy wants them outermost first.
        want_shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        w = dequantize(t.data, t.tensor_type)
        w = np.ascontiguousarray(w, dtype=np.float32).reshape(want_shape)
        m = BLOCK_RE.match(t.name)
        part = m.group(2) if m else t.name.split(".")[0]
        if part in expected and t.name.endswith(".weight") and w.shape != expected[part]:
            die(f"{t.name}: shape {w.shape}, expected {expected[part]}")
        if part == "attn_q":
            w = unpermute(w, n_head)
        elif part == "attn_k":
            w = unpermute(w, n_kv)
        name = hf_name(t.name)
        if name in tensors:
            die(f"duplicate tensor {name}")
        tensors[name] = np.ascontiguousarray(w)
    return tensors


def build_config(reader: GGUFReader) -> dict:
    arch = required(reader, "general.architecture")
    if arch != "llama":
        die(f"architecture {arch!r} is not llama")
    a = lambda k, d=None: field(reader, f"{arch}.{k}", d)  # noqa: E731
    n_head = int(a("attention.head_count"))
    n_kv = int(a("attention.head_count_kv", n_head))
    hidden = int(a("embedding_length"))
    tokens = required(reader, "tokenizer.ggml.tokens")
    head_dim = int(a("attention.key_length", hidden // n_head))
    rope_dims = a("rope.dimension_count")
    if rope_dims is not None and int(rope_dims) != head_dim:
        die(f"partial rotary (rope.dimension_count {rope_dims} != head_dim {head_dim}) is not supported")
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": int(a("feed_forward_length")),
        "num_hidden_layers": int(a("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "rms_norm_eps": clean_f32(a("attention.layer_norm_rms_epsilon")),
        "rope_theta": clean_f32(a("rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "max_position_embeddings": int(a("context_length")),
        "vocab_size": int(a("vocab_size", len(tokens))),
        "tie_word_embeddings": not has_output,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "use_cache": True,
        "initializer_range": 0.02,
        "bos_token_id": int(required(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(required(reader, "tokenizer.ggml.eos_token_id")),
        "torch_dtype": "float32",
    }
    pad = field(reader, "tokenizer.ggml.padding_token_id")
    if pad is not None:
        cfg["pad_token_id"] = int(pad)
    if a("rope.scaling.type") not in (None, "none"):
        die("rope scaling in the GGUF is not supported by this converter")
    return cfg


def build_tokenizer(reader: GGUFReader) -> tuple[Tokenizer, list[str], list[int]]:
    model = required(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        die(f"tokenizer.ggml.model {model!r} is not gpt2 (byte-level BPE)")
    pre = field(reader, "tokenizer.ggml.pre")
    if pre not in (None, "smollm"):
        # Other pre-tokenizers use different regexes; do not guess.
        die(f"tokenizer.ggml.pre {pre!r} is not supported (only smollm)")
    tokens = list(required(reader, "tokenizer.ggml.tokens"))
    types = [int(x) for x in required(reader, "tokenizer.ggml.token_type")]
    merges = []
    for m in required(reader, "tokenizer.ggml.merges"):
        a, sep, b = m.partition(" ")
        if not sep or not a or not b or " " in b:
            die(f"bad merge {m!r}")
        merges.append((a, b))
    vocab = {}
    for i, tok in enumerate(tokens):
        if tok in vocab:
            die(f"duplicate token {tok!r} at {vocab[tok]} and {i}")
        vocab[tok] = i
    tk = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=None, byte_fallback=False, fuse_unk=False))
    tk.normalizer = None
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [tokens[i] for i, ty in enumerate(types) if ty == TOKEN_TYPE_CONTROL]
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    for s in specials:
        if tk.token_to_id(s) != vocab[s]:
            die(f"special token {s!r} got id {tk.token_to_id(s)}, expected {vocab[s]}")
    return tk, tokens, types


def build_tokenizer_config(reader: GGUFReader, tokens: list[str], types: list[int], cfg: dict) -> dict:
    def tok(key):
        i = field(reader, key)
        return None if i is None else tokens[int(i)]

    tc = {
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(field(reader, "tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {
                "content": tokens[i],
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, ty in enumerate(types)
            if ty == TOKEN_TYPE_CONTROL
        },
        "bos_token": tok("tokenizer.ggml.bos_token_id"),
        "eos_token": tok("tokenizer.ggml.eos_token_id"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg["max_position_embeddings"],
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": len(tokens),
    }
    for key, name in (("tokenizer.ggml.padding_token_id", "pad_token"), ("tokenizer.ggml.unknown_token_id", "unk_token")):
        v = tok(key)
        if v is not None:
            tc[name] = v
    template = field(reader, "tokenizer.chat_template")
    if template is not None:
        tc["chat_template"] = template
    return tc


def write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    src, out = argv[1], argv[2]
    t0 = time.monotonic()
    self_check_permute()
    reader = GGUFReader(src)
    cfg = build_config(reader)
    tk, tokens, types = build_tokenizer(reader)
    tensors = convert_tensors(reader, cfg)
    if "model.embed_tokens.weight" not in tensors:
        die("no token_embd tensor")

    os.makedirs(out, exist_ok=True)
    st = os.path.join(out, "model.safetensors")
    save_file(tensors, st, metadata={"format": "pt"})
    os.chmod(st, 0o644)  # safetensors creates it 0600
    write_json(os.path.join(out, "config.json"), cfg)
    write_json(
        os.path.join(out, "generation_config.json"),
        {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"], "do_sample": False},
    )
    tk.save(os.path.join(out, "tokenizer.json"))
    write_json(os.path.join(out, "tokenizer_config.json"), build_tokenizer_config(reader, tokens, types, cfg))

    n_params = sum(int(w.size) for w in tensors.values())
    print(
        f"gguf_to_hf: {os.path.basename(src)} -> {out}: {len(tensors)} tensors, {n_params:,} params (f32), "
        f"{cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, ffn {cfg['intermediate_size']}, "
        f"heads {cfg['num_attention_heads']}/{cfg['num_key_value_heads']} x {cfg['head_dim']}, "
        f"vocab {cfg['vocab_size']}, tied {cfg['tie_word_embeddings']}, "
        f"{sum(1 for t in types if t == TOKEN_TYPE_CONTROL)} special tokens, {time.monotonic() - t0:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
