#!/usr/bin/env python3
"""Reference chat-template renderer: renders jobs with jinja2 exactly as HF transformers'
apply_chat_template does, so tests can compare surge's minijinja rendering byte for byte.

stdin: one JSON job, or a JSON list of jobs:
  {"template": str, "messages": [...], "add_generation_prompt": bool,
   "bos_token": str | null, "eos_token": str | null}
stdout: for each job {"ok": rendered_text} or {"error": message} (a list if given a list).
"""

import json
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers overrides jinja's tojson, which HTML-escapes and ASCII-escapes.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def strftime_now(format):
    return datetime.now().strftime(format)


def compile_template(source):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def render(job):
    try:
        template = compile_template(job["template"])
        # transformers passes tools/documents (None when absent) and the special tokens
        # that the tokenizer has.
        kwargs = {
            "messages": job["messages"],
            "tools": None,
            "documents": None,
            "add_generation_prompt": job.get("add_generation_prompt", False),
        }
        for key in ("bos_token", "eos_token"):
            if job.get(key) is not None:
                kwargs[key] = job[key]
        return {"ok": template.render(**kwargs)}
    except Exception as e:  # noqa: BLE001 - every failure is a result to compare
        return {"error": f"{type(e).__name__}: {e}"}


def main():
    jobs = json.load(sys.stdin)
    if isinstance(jobs, list):
        result = [render(job) for job in jobs]
    else:
        result = render(jobs)
    json.dump(result, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
