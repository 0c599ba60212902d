#!/usr/bin/env python3
"""Drives a running `surge serve` with the official OpenAI Python SDK; exits 1 on any failure.

    openai_sdk_check.py --base-url http://127.0.0.1:PORT/v1 --model NAME --api-key KEY

Run by tests/api_openai_sdk.rs against SmolLM2. Every check runs even when an earlier one
fails; the output says which failed and why.
"""

import argparse
import sys
import traceback

import openai
from openai import OpenAI

QUESTION = "What is the capital of France?"
POEM = "Write a short poem about the sea."


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--api-key", required=True)
    return p.parse_args()


ARGS = parse_args()
# No retries: a 429 or 5xx must show, not be papered over.
CLIENT = OpenAI(base_url=ARGS.base_url, api_key=ARGS.api_key, timeout=300, max_retries=0)
MODEL = ARGS.model
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def ask(content=QUESTION, **kw):
    kw.setdefault("temperature", 0.0)
    kw.setdefault("max_tokens", 32)
    return CLIENT.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kw
    )


def ask_stream(content=QUESTION, **kw):
    kw.setdefault("temperature", 0.0)
    kw.setdefault("max_tokens", 32)
    return list(
        CLIENT.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], stream=True, **kw
        )
    )


def complete(**kw):
    kw.setdefault("temperature", 0.0)
    kw.setdefault("max_tokens", 8)
    return CLIENT.completions.create(model=MODEL, prompt="The capital of France is", **kw)


def check_usage(usage):
    assert usage is not None, "no usage"
    assert usage.prompt_tokens > 0, usage
    assert usage.completion_tokens > 0, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage


@check
def models_list():
    models = list(CLIENT.models.list())
    assert [m.id for m in models] == [MODEL], models
    m = models[0]
    assert m.object == "model", m
    assert m.owned_by, m
    assert m.created > 1_600_000_000, m


@check
def chat_answers():
    r = ask()
    assert r.object == "chat.completion", r
    assert r.id.startswith("chatcmpl-"), r.id
    assert r.model == MODEL, r.model
    assert len(r.choices) == 1, r
    c = r.choices[0]
    assert c.message.role == "assistant", c
    assert "Paris" in c.message.content, c.message.content
    assert c.finish_reason in ("stop", "length"), c
    check_usage(r.usage)


@check
def chat_stream_with_usage():
    plain = ask()
    chunks = ask_stream(stream_options={"include_usage": True})
    assert chunks, "no chunks"
    assert len({c.id for c in chunks}) == 1, "one id per stream"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
    last = chunks[-1]
    assert last.choices == [], last
    check_usage(last.usage)
    assert all(c.usage is None for c in chunks[:-1]), "usage only in the last chunk"
    finishes = [ch.finish_reason for c in chunks[:-1] for ch in c.choices if ch.finish_reason]
    assert finishes == [plain.choices[0].finish_reason], finishes
    text = "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
    assert text == plain.choices[0].message.content, (text, plain.choices[0].message.content)
    assert last.usage.completion_tokens == plain.usage.completion_tokens


@check
def chat_stream_without_usage():
    chunks = ask_stream()
    assert all(c.choices for c in chunks), "no usage chunk unless asked for"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length"), chunks[-1]


@check
def completions():
    r = complete()
    assert r.object == "text_completion", r
    assert r.id.startswith("cmpl-"), r.id
    assert len(r.choices) == 1 and r.choices[0].text, r
    check_usage(r.usage)
    chunks = list(complete(stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.text for c in chunks for ch in c.choices)
    assert text == r.choices[0].text, (text, r.choices[0].text)
    assert chunks[-1].choices == [], chunks[-1]
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens, chunks[-1]
    batch = CLIENT.completions.create(
        model=MODEL, prompt=["The capital of France is", "Once upon a time"], max_tokens=4, temperature=0.0
    )
    assert [c.index for c in batch.choices] == [0, 1], batch


@check
def chat_logprobs():
    r = ask(logprobs=True, top_logprobs=3, max_tokens=8)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens, (len(content), r.usage)
    for e in content:
        assert e.logprob <= 0, e
        assert len(e.top_logprobs) == 3, e
        assert abs(e.top_logprobs[0].logprob - e.logprob) < 1e-3, e
    chunks = ask_stream(logprobs=True, top_logprobs=2, max_tokens=8)
    streamed = [e for c in chunks for ch in c.choices if ch.logprobs for e in ch.logprobs.content]
    assert len(streamed) == r.usage.completion_tokens, len(streamed)


@check
def completions_logprobs():
    r = complete(logprobs=2)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n, lp
    assert all(x <= 0 for x in lp.token_logprobs), lp
    assert all(1 <= len(t) <= 3 for t in lp.top_logprobs), lp


@check
def n_equals_2():
    r = ask(content=POEM, n=2, temperature=0.8, seed=7, max_tokens=16)
    assert [c.index for c in r.choices] == [0, 1], r
    assert all(c.message.content for c in r.choices), r
    chunks = ask_stream(content=POEM, n=2, temperature=0.8, seed=7, max_tokens=16)
    finishes = sorted(ch.index for c in chunks for ch in c.choices if ch.finish_reason)
    assert finishes == [0, 1], finishes
    for i in (0, 1):
        text = "".join(ch.delta.content or "" for c in chunks for ch in c.choices if ch.index == i)
        assert text == r.choices[i].message.content, (i, text, r.choices[i].message.content)


@check
def stop():
    plain = ask().choices[0].message.content
    assert "Paris" in plain, plain
    r = ask(stop=["Paris"])
    c = r.choices[0]
    assert "Paris" not in c.message.content, c.message.content
    assert c.finish_reason == "stop", c
    assert plain.startswith(c.message.content), (plain, c.message.content)
    r = ask(stop="Paris")
    assert "Paris" not in r.choices[0].message.content, r
    r = complete(stop=["Paris"], max_tokens=16)
    assert "Paris" not in r.choices[0].text, r


@check
def seed_reproducibility():
    a = ask(content=POEM, temperature=0.8, seed=1234, max_tokens=24).choices[0].message.content
    b = ask(content=POEM, temperature=0.8, seed=1234, max_tokens=24).choices[0].message.content
    assert a == b, (a, b)
    x = complete(temperature=0.8, seed=99, max_tokens=16).choices[0].text
    y = complete(temperature=0.8, seed=99, max_tokens=16).choices[0].text
    assert x == y, (x, y)


@check
def errors_are_typed():
    try:
        CLIENT.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert "no-such-model" in str(e), e
    try:
        ask(temperature=-1)
        raise AssertionError("temperature -1 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400, e
    try:
        ask(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
        raise AssertionError("tools were accepted")
    except openai.BadRequestError as e:
        assert "tools" in str(e), e
    wrong = OpenAI(base_url=ARGS.base_url, api_key="wrong-key", timeout=60, max_retries=0)
    try:
        wrong.models.list()
        raise AssertionError("a wrong API key was accepted")
    except openai.AuthenticationError:
        pass


def main():
    print(f"openai {openai.__version__} against {ARGS.base_url} ({MODEL})")
    failed = []
    for fn in CHECKS:
        try:
            fn()
            print(f"ok     {fn.__name__}")
        except Exception:  # every failure is reported, then the next check runs
            failed.append(fn.__name__)
            print(f"FAILED {fn.__name__}")
            traceback.print_exc(file=sys.stdout)
    print(f"{len(CHECKS) - len(failed)} of {len(CHECKS)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
