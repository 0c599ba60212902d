#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/ (committed).

Run with the venv of tests/support/fetch-models.sh (it has `gguf` and `numpy`):
    .cache/venv/bin/python fuzz/make_seeds.py
Each seed starts with the byte the target reads first to pick what it parses.
"""
import gzip
import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np

CORPUS = Path(__file__).resolve().parent / "corpus"


def write(target: str, name: str, data: bytes) -> None:
    path = CORPUS / target / f"seed-{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def requests() -> None:
    chat = {
        "model": "llama",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
        "max_tokens": 8,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": ["\n", "END"],
        "logprobs": True,
        "top_logprobs": 2,
        "n": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": 1,
    }
    completion = {
        "model": "llama",
        "prompt": ["Hello", [128000, 9906]],
        "max_tokens": 4,
        "echo": True,
        "logprobs": 1,
        "stop_token_ids": [13],
        "ignore_eos": True,
    }
    write("request_validation", "chat", b"\x00" + json.dumps(chat).encode())
    write("request_validation", "completion", b"\x01" + json.dumps(completion).encode())


def templates() -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    write("chat_template", "llama3-messages", json.dumps(messages).encode())
    loop = "{% for m in messages %}{{ m.role }}: {{ m.content | trim }}{% endfor %}"
    write("chat_template", "loop", loop.encode() + b"\x00" + json.dumps(messages).encode())
    ranges = "{% for i in range(10) %}{{ i }}{% endfor %}{{ raise_exception('x') }}"
    write("chat_template", "range", ranges.encode() + b"\x00[]")


def detokenizer() -> None:
    ids = [128000, 9906, 11, 1917, 0, 57170, 9468, 236, 231, 128009]
    write("detokenizer", "ids", bytes([2]) + b"".join(struct.pack("<I", i)[:3] for i in ids))


def safetensors() -> bytes:
    tensor = np.arange(16, dtype=np.float32).tobytes()
    header = {
        "model.embed_tokens.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
        "lm_head.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [64, 128]},
    }
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + tensor + tensor


def gguf_file() -> bytes:
    import gguf  # from the fixture venv

    out = io.BytesIO()
    path = CORPUS / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "<s>", "</s>"])
    writer.add_token_types([1, 1, 3, 3])
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(3)
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out.write(path.read_bytes())
    path.unlink()
    return out.getvalue()


def models() -> None:
    write("model_headers", "gguf", b"\x00" + gguf_file())
    write("model_headers", "safetensors", b"\x01" + safetensors())


def tar_of(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = payload
                tar.addfile(info)
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = payload
                tar.addfile(info)
    return buf.getvalue()


def gzip_members(data: bytes, member: int) -> bytes:
    """gzip as `surge modelcar build` writes it: members that say their size (mgzip)."""
    out = b""
    for at in range(0, len(data), member):
        chunk = data[at : at + member]
        deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
        body = deflate.compress(chunk) + deflate.flush()
        size = 20 + len(body) + 8
        header = b"\x1f\x8b\x08\x04" + bytes(4) + b"\x04\xff" + struct.pack("<H2sHI", 8, b"IG", 4, size)
        out += header + body + struct.pack("<II", zlib.crc32(chunk), len(chunk))
    return out


def layers() -> None:
    layer = tar_of(
        [
            ("models", "dir", None),
            ("models/config.json", "file", b"{}"),
            ("models/sub/w.bin", "file", b"\x00" * 32),
            ("models/link.json", "symlink", "config.json"),
            ("models/hard.json", "hardlink", "models/config.json"),
            ("models/.wh.old", "file", b""),
            ("models/sub/.wh..wh..opq", "file", b""),
            ("etc/passwd", "file", b"x"),
        ]
    )
    write("oci_layer", "tar", b"\x01" + layer)
    write("oci_layer", "tar-gzip", b"\x01" + gzip.compress(layer, mtime=0))
    write("oci_layer", "tar-gzip-members", b"\x01" + gzip_members(layer, 1024))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "0" * 64, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "1" * 64, "size": 10}],
    }
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "2" * 64, "size": 9,
             "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    write("oci_layer", "manifest", b"\x00" + json.dumps(manifest).encode())
    write("oci_layer", "index", b"\x00" + json.dumps(index).encode())


if __name__ == "__main__":
    requests()
    templates()
    detokenizer()
    models()
    layers()
