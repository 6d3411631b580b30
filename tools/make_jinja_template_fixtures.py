#!/usr/bin/env python3
"""Real chat templates rendered by transformers, for Tests/QLoRATests/Tokenizer/JinjaTemplateTests.swift.

Usage: make_jinja_template_fixtures.py [--sdist PATH]
Pinned: python 3.11, transformers 5.23.0, jinja2 3.1.6, trl 1.16.0 (the /work/venv-fixtures);
llama-cpp-python 0.3.36, whose sdist vendors llama.cpp's models/templates/*.jinja (MIT),
fetched from PyPI with its sha256 checked (fetch_llama_cpp_vocabs.download_sdist; `pip
download` cannot fetch it without building its metadata), unless --sdist names a copy.

Writes into Tests/QLoRATests/Fixtures/jinja/:
  NAME.jinja        each template's text as the sdist (or trl) holds it, byte for byte
  renderings.json   where each template comes from, its bos/eos, the conversations and tools,
                    and for each (template, conversation, add_generation_prompt) what
                    transformers' render_jinja_template returns: "text" (and, for templates
                    with {% generation %}, "generation": the UTF-8 byte ranges the markers
                    cover), or "error": the message of the exception the template raised;
                    "units": small templates (UNITS), one construct each, rendered by the
                    same compiled environment (whitespace control, loops, filters, errors).
strftime_now reads NOW (a fixed time, local time zone ignored: noon UTC keeps the date the
same in any zone within ±11 h); no other randomness.
"""
import datetime as dt
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import jinja2
import transformers
import transformers.utils.chat_template_utils as ctu
import trl

import fixture_common as fc
import fetch_llama_cpp_vocabs as fetch

OUT = fc.QLORA_FIXTURES / "jinja"
NOW = dt.datetime(2026, 3, 14, 12, 0, 0)

# name: (file in llama.cpp's models/templates, bos, eos)
SDIST_TEMPLATES = {
    "qwen3": ("Qwen-Qwen3-0.6B.jinja", "", "<|im_end|>"),
    "qwen2.5": ("Qwen-Qwen2.5-7B-Instruct.jinja", "", "<|im_end|>"),
    "qwq": ("Qwen-QwQ-32B.jinja", "", "<|im_end|>"),
    "gemma2": ("google-gemma-2-2b-it.jinja", "<bos>", "<eos>"),
    "phi3.5": ("microsoft-Phi-3.5-mini-instruct.jinja", "<s>", "<|endoftext|>"),
    "llama3.1": ("meta-llama-Llama-3.1-8B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    "llama3.2": ("meta-llama-Llama-3.2-3B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    "llama3.3": ("meta-llama-Llama-3.3-70B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    "mistral-nemo": ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "<s>", "</s>"),
    "mistral-small3.2": ("Mistral-Small-3.2-24B-Instruct-2506.jinja", "<s>", "</s>"),
    "granite3.3": ("ibm-granite-granite-3.3-2B-Instruct.jinja", "", "<|end_of_text|>"),
    "smollm3": ("HuggingFaceTB-SmolLM3-3B.jinja", "", "<|im_end|>"),
    "deepseek-r1-qwen": ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "hermes3": ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", "<|begin_of_text|>", "<|im_end|>"),
    "command-r7b": ("CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"),
    "gpt-oss": ("openai-gpt-oss-120b.jinja", "<|startoftext|>", "<|return|>"),
}
# name: (file in trl's chat_templates, bos, eos): TRL's training templates mark assistant text with {% generation %}.
TRL_TEMPLATES = {
    "qwen3-trl-training": ("qwen3_training.jinja", "", "<|im_end|>"),
}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current temperature in a city, in °C.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name, e.g. \"Paris\""},
                                                     "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"]}}}]

CONVERSATIONS = {
    "user": {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
    "system_user": {"messages": [{"role": "system", "content": "You answer in one word."},
                                 {"role": "user", "content": "What is the capital of France?"}]},
    "multi_turn": {"messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": " Hi! "},
                                {"role": "assistant", "content": "Hello.\n"},
                                {"role": "user", "content": "2+2?"}]},
    "multi_turn_no_system": {"messages": [{"role": "user", "content": "Hi"},
                                          {"role": "assistant", "content": "Hello"},
                                          {"role": "user", "content": "Bye"},
                                          {"role": "assistant", "content": "Goodbye, and «merci» 👋"}]},
    "assistant_last": {"messages": [{"role": "system", "content": " Be brief. \n"},
                                    {"role": "user", "content": "2+2?"},
                                    {"role": "assistant", "content": "4"}]},
    "reasoning": {"messages": [{"role": "user", "content": "2+2?"},
                               {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"},
                               {"role": "user", "content": "And 3+3?"},
                               {"role": "assistant", "content": "<think>\nAgain.\n</think>\n\n6"}]},
    "tools": {"messages": [{"role": "system", "content": "You can check the weather."},
                           {"role": "user", "content": "How warm is it in Paris?"}], "tools": TOOLS},
    "tool_calls": {"messages": [{"role": "user", "content": "How warm is it in Paris?"},
                                {"role": "assistant", "content": "",
                                 "tool_calls": [{"id": "call12345", "type": "function",
                                                 "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}]},
                                {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "{\"temperature\": 21.5}"},
                                {"role": "assistant", "content": "It is 21.5 °C in Paris."}], "tools": TOOLS},
}


# Small templates, one construct each, rendered by the same environment (name: (template, variables)).
UNITS = {
    "trim_blocks": ("{% if true %}\nyes\n{% endif %}\nend", {}),
    "lstrip_blocks": ("a\n    {% if true %}\n    b\n    {% endif %}\n  {{ 'c' }}\n", {}),
    "lstrip_after_text": ("x  {% if true %}y{% endif %}", {}),
    "plus_keeps": ("a\n  {%+ if true +%}\nb{% endif %}", {}),
    "minus_strips": ("a  \n  {%- if true -%}  \n  b  \n  {%- endif -%}\n  c", {}),
    "minus_output": ("[ {{- 'x' -}} ]\n{{ 'y' }}  {#- comment -#}  z", {}),
    "comment_trim": ("a\n  {# note #}\nb", {}),
    "trailing_newline": ("line\n", {}),
    "crlf": ("{% if true %}\r\na\r\n{% endif %}\r\n", {}),
    "loop_vars": ("{% for x in items %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}", {"items": ["a", "b", "c"]}),
    "loop_prev_next": ("{% for x in items %}{{ loop.previtem | default('^') }}{{ x }}{{ loop.nextitem | default('$') }} {{ loop.cycle('o', 'e') }};{% endfor %}", {"items": [1, 2, 3]}),
    "loop_filter_else": ("{% for x in items if x > 1 %}{{ loop.index }}:{{ x }} {% else %}none{% endfor %}|{% for x in [] %}x{% else %}empty{% endfor %}", {"items": [1, 2, 3]}),
    "loop_break_continue": ("{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x > 4 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    "loop_unpack": ("{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}{% for k, v in d | dictsort %}{{ k }}{% endfor %}", {"d": {"b": 1, "a": 2, "C": 3}}),
    "loop_string_dict": ("{% for c in 'abc' %}{{ c }}.{% endfor %}{% for k in d %}{{ k }}{% endfor %}", {"d": {"x": 1, "y": 2}}),
    "scoping": ("{% set x = 1 %}{% for i in [1, 2] %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}", {}),
    "namespace": ("{% set ns = namespace(n=0, s='') %}{% for i in [1, 2, 3] %}{% set ns.n = ns.n + i %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.n }} {{ ns.s }}", {}),
    "set_block": ("{% set body %}\n  <{{ x }}>\n{% endset %}[{{ body }}]{% set a, b = 1, 2 %}{{ a + b }}", {"x": "y"}),
    "macro": ("{% macro tag(name, value='none') %}<{{ name }}={{ value }}>{% endmacro %}{{ tag('a') }}{{ tag('b', 2) }}{{ tag(name='c', value=[1]) }}", {}),
    "if_elif": ("{% for x in [0, 1, 2, 'a', none] %}{% if x is none %}N{% elif x is string %}S{% elif x %}T{% else %}F{% endif %}{% endfor %}", {}),
    "arithmetic": ("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 + 2.5 }} {{ 'ab' * 3 }} {{ 10 - 3 * 2 }} {{ (1 + 2) * 3 }} {{ 4 / 2 }}", {}),
    "concat": ("{{ 'a' ~ 1 ~ none ~ true ~ 2.0 }} {{ 'x' + 'y' }} {{ [1] + [2, 3] }} {{ undefined_name ~ '!' }}", {}),
    "comparisons": ("{{ 1 < 2 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ [1, 2] == [1, 2] }} {{ 'a' in 'cat' }} {{ 3 not in [1, 2] }} {{ 'k' in d }} {{ not 1 }} {{ 1 if 0 else 2 }} {{ 'x' if true }}", {"d": {"k": 1}}),
    "and_or_values": ("{{ 0 or 'b' }} {{ 'a' and 'b' }} {{ '' and 'b' }} {{ none or [] }}", {}),
    "tests": ("{{ x is defined }} {{ y is undefined }} {{ x is string }} {{ d is mapping }} {{ l is iterable }} {{ l is sequence }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 1 is number }} {{ 1.5 is float }} {{ 1 is integer }} {{ true is boolean }} {{ false is false }} {{ 'a' is eq 'a' }} {{ 1 is in l }} {{ 'ab' is lower }} {{ x is not none }}", {"x": "s", "d": {}, "l": [1, 2]}),
    "slicing": ("{{ s[1:] }} {{ s[:-1] }} {{ s[::-1] }} {{ s[::2] }} {{ l[1:3] }} {{ l[-1] }} {{ l[::-1] }} {{ l[-2:] }} {{ s[0] }} {{ l[10] is defined }}", {"s": "hello", "l": [1, 2, 3, 4]}),
    "attributes": ("{{ d.a }} {{ d['a'] }} {{ d.b.c }} {{ d.missing is defined }} {{ d.get('a') }} {{ d.get('zz', 'dflt') }} {{ d.get('zz') }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.items() | list | length }}", {"d": {"a": 1, "b": {"c": "deep"}}}),
    "string_methods": ("{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ 'xxhixx'.strip('x') }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'hello'.startswith('he') }}|{{ 'hello'.endswith(('lo', 'x')) }}|{{ 'hello world'.title() }}|{{ 'hELLO'.capitalize() }}|{{ 'aaa'.replace('a', 'b', 2) }}|{{ 'AbC'.upper() }}{{ 'AbC'.lower() }}|{{ '{} and {name}'.format(1, name='x') }}|{{ '-'.join(['a', 'b']) }}", {"s": "  pad me \n"}),
    "filters_text": ("{{ s | trim }}|{{ s | upper }}|{{ s | lower }}|{{ 'hello-world foo(bar' | title }}|{{ 'hELLO wORLD' | capitalize }}|{{ s | replace('e', 'E') }}|{{ s | length }}|{{ 'a\nb\n\nc' | indent(2) }}|{{ 'a\nb' | indent(2, true) }}|{{ 'x' | indent('>> ', first=true) }}|{{ '<a href=\"x\">' | e }}|{{ 3.7 | int }} {{ '42' | int }} {{ 'x' | int }} {{ '2.5' | float }} {{ 7 | string }}", {"s": "  Hello there  "}),
    "filters_lists": ("{{ l | join(', ') }}|{{ l | first }}|{{ l | last }}|{{ l | length }}|{{ l | reverse | list }}|{{ l | sort | list }}|{{ l | sort(reverse=true) | join }}|{{ l | unique | list }}|{{ l | sum }}|{{ l | min }} {{ l | max }}|{{ users | map(attribute='name') | join(',') }}|{{ users | selectattr('admin') | map(attribute='name') | list }}|{{ users | rejectattr('admin') | list | length }}|{{ users | selectattr('name', 'equalto', 'bo') | list }}|{{ l | select('odd') | list }}|{{ ['a', 'b'] | map('upper') | list }}|{{ 'abc' | list }}|{{ users | sort(attribute='name') | map(attribute='name') | join }}", {"l": [3, 1, 2, 3], "users": [{"name": "bo", "admin": True}, {"name": "al", "admin": False}]}),
    "default": ("{{ missing | default('d') }} {{ '' | default('e') }} {{ '' | default('e', true) }} {{ none | default('n') }} {{ missing | d('short') }}", {}),
    "tojson": ("{{ v | tojson }}\n{{ v | tojson(indent=2) }}\n{{ v | tojson(separators=(',', ':')) }}\n{{ v | tojson(sort_keys=true) }}\n{{ 'é\"\\\n\t<>&\u2028' | tojson }}\n{{ [] | tojson(indent=2) }} {{ {} | tojson }}", {"v": {"b": [1, 2.5, 1.0, True, None, "s"], "a": {"x": {}}, "u": "ünï 👋", "e": 1e-05, "big": 1e16}}),
    "items_filter": ("{% for k, v in d | items %}{{ k }}{{ v }}{% endfor %}", {"d": {"z": 1, "a": 2}}),
    "dict_literal": ("{% set d = {'a': 1, 'b': [1, 2], 'c': {'x': none}} %}{{ d }} {{ d | tojson }} {{ [1, 'a', none, true, 1.5] }} {{ \"it's\" }} {{ 'say \"hi\"' }} {{ none }} {{ 'a' 'b' }}", {}),
    "syntax_error": ("{% for x in items %}\n{{ x }}\n{% endif %}", {}),
    "filter_block": ("{% filter upper %}shout {{ x }}{% endfilter %}", {"x": "this"}),
    "raw": ("{% raw %}{{ not rendered }} {% if %}{% endraw %}\n{{ 'after' }}", {}),
    "nested_loops": ("{% for a in [1, 2] %}{% for b in 'xy' %}{{ loop.index }}{{ b }}{% endfor %}{{ loop.index }}{{ a }};{% endfor %}", {}),
    "macro_scope": ("{% set greeting = 'hi' %}{% macro say(who) %}{{ greeting }} {{ who }}{% if caller is defined %}!{% endif %}{% endmacro %}{% for n in ['a', 'b'] %}{{ say(n) }},{% endfor %}", {}),
    "sameas_none": ("{{ none is sameas none }} {{ false is sameas false }} {{ 0 is sameas false }} {{ x is none }} {{ x is sameas none }}", {"x": None}),
    "unicode": ("{{ s | length }} {{ s[1] }} {{ s[::-1] }} {{ s | upper }} {{ s.split('é') }}", {"s": "aéb👋c"}),
    "messages_like": ("{%- for m in messages %}\n    {%- if m.role == 'system' %}\n        {{- '<<' + m['content'] | trim + '>>\\n' }}\n    {%- else %}\n        {{- m.role | upper }}: {{ m.content }}\n    {% endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}ASSISTANT:{% endif %}", {"messages": [{"role": "system", "content": " sys "}, {"role": "user", "content": "q"}], "add_generation_prompt": True}),
    "generation": ("{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}</s>{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}", {"messages": [{"role": "user", "content": "hi ü"}, {"role": "assistant", "content": "hé"}, {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
    "raise": ("line one\n{% if true %}\n  {{ raise_exception('bad ' ~ 1) }}\n{% endif %}", {}),
    "undefined_attribute": ("{{ nothing.attr }}", {}),
    "type_error": ("\n\n{{ 1 + 'a' }}", {}),
    "none_not_iterable": ("{% for x in none %}{% endfor %}", {}),
    "strftime": ("{{ strftime_now('%Y-%m-%d %H:%M %b %A %d') }}", {}),
}


class FixedClock(dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return NOW


def render(text: str, bos: str, eos: str, conversation: dict, gen: bool, markers: bool) -> dict:
    try:
        rendered, indices = ctu.render_jinja_template(
            [conversation["messages"]], tools=conversation.get("tools"), chat_template=text,
            add_generation_prompt=gen, return_assistant_tokens_mask=markers, bos_token=bos, eos_token=eos)
    except Exception as e:  # what the template raised, or a Jinja2 error
        return {"error": f"{type(e).__name__}: {e}"}
    out = {"text": rendered[0]}
    if markers:  # character offsets → UTF-8 byte offsets, as JinjaTemplate reports them
        def byte(i): return len(rendered[0][:i].encode())
        out["generation"] = [[byte(a), byte(b)] for a, b in indices[0]]
    return out


def main(argv):
    ctu.datetime = FixedClock  # strftime_now reads datetime.now() from this module
    templates = {}
    with tempfile.TemporaryDirectory() as tmp:
        sdist = Path(argv[1]) if argv[:1] == ["--sdist"] else fetch.download_sdist(Path(tmp))
        with tarfile.open(sdist) as tar:
            for name, (file, bos, eos) in SDIST_TEMPLATES.items():
                text = tar.extractfile(fetch.MODELS + "templates/" + file).read().decode()
                source = f"{fetch.PACKAGE}=={fetch.VERSION} sdist: vendor/llama.cpp/models/templates/{file} (llama.cpp, MIT)"
                templates[name] = {"bos": bos, "eos": eos, "source": source, "text": text}
    for name, (file, bos, eos) in TRL_TEMPLATES.items():
        text = (Path(trl.__file__).parent / "chat_templates" / file).read_text()
        templates[name] = {"bos": bos, "eos": eos, "source": f"trl=={trl.__version__}: trl/chat_templates/{file} (Apache-2.0)", "text": text}

    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, t in templates.items():
        (OUT / f"{name}.jinja").write_text(t["text"])
        markers = "generation" in t["text"] and name in TRL_TEMPLATES
        for conv_name, conversation in CONVERSATIONS.items():
            for gen in (True, False):
                cases.append({"template": name, "conversation": conv_name, "add_generation_prompt": gen,
                              **render(t["text"], t["bos"], t["eos"], conversation, gen, markers)})
    units = []
    for name, (text, variables) in UNITS.items():
        try:
            compiled = ctu._compile_jinja_template(text)
            if "generation" in name:
                rendered, indices = ctu._render_with_assistant_indices(compiled, tools=None, documents=None, add_generation_prompt=False, **variables)
                result = {"text": rendered, "generation": [[len(rendered[:a].encode()), len(rendered[:b].encode())] for a, b in indices]}
            else:
                result = {"text": compiled.render(**variables)}
        except Exception as e:
            result = {"error": f"{type(e).__name__}: {e}"}
        units.append({"name": name, "template": text, "variables": variables, **result})
    out = {"generator": {"script": "tools/make_jinja_template_fixtures.py", "transformers": transformers.__version__,
                         "jinja2": jinja2.__version__, "trl": trl.__version__},
           "now": NOW.strftime("%Y-%m-%dT%H:%M:%S"),
           "templates": {name: {k: t[k] for k in ("bos", "eos", "source")} for name, t in templates.items()},
           "conversations": CONVERSATIONS, "cases": cases, "units": units}
    path = OUT / "renderings.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    errors = sum("error" in c for c in cases)
    print(f"wrote {path}: {len(cases)} renderings ({errors} raised) of {len(templates)} templates")


if __name__ == "__main__":
    main(sys.argv[1:])
