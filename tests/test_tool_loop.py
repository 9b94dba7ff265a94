"""The Python tool in generation: a tiny model that learned (here, in a few seconds) to write code blocks; the engine
stops its row at the block's end, the sandbox runs the code, the output comes back as an ```output block, and the row
goes on while the other rows keep decoding."""

from __future__ import annotations

import time

import pytest

from tiny import make_tokenizer, prompt_ids, scripted_model
from tutorlm.models.engine import Engine, RowSettings
from tutorlm.tools.loop import ToolLoop, ToolSettings, code_to_run, output_spans, strip_outputs
from tutorlm.tools.sandbox import Limits

SCRIPTS = {
    # a slow call: while it runs, the other prompts use the only slot
    "Compute 17 * 23 + 4.": "```python\nimport time\ntime.sleep(0.6)\nprint(17 * 23 + 4)\n```\n```output\n395\n```\nThe answer is 395.",
    "Flip a coin.": "Heads. The answer is Yes.",
    "Say no.": "The answer is No.",
    "Divide by zero.": "```python\nprint(1 / 0)\n```\n```output\nZeroDivisionError: division by zero\n```\nThe answer is none.",
}


@pytest.fixture(scope="module")
def scripted():
    """A tiny Llama that answers each SCRIPTS question with its script (output blocks included)."""
    tokenizer = make_tokenizer()
    return tokenizer, scripted_model(tokenizer, SCRIPTS)


def run_loop(tokenizer, model, questions, *, slots=4, max_tokens=80, tools=ToolSettings()):
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    engine = Engine(model, slots=slots, pad_token_id=tokenizer.pad_token_id, stop_ids={tokenizer.eos_token_id})
    loop = ToolLoop(engine, tokenizer, tools)
    results, order = {}, []

    def finished(index, tokens, reason, logprobs, latency, written, calls):
        results[index] = (tokens, reason, written, calls)
        order.append(index)

    loop.run(prompts, [RowSettings(max_tokens, seed=i) for i in range(len(prompts))], finished=finished)
    return results, order, loop


def test_code_blocks_are_found_only_when_closed():
    assert code_to_run("Let me see.\n```python\nprint(2 + 2)\n```") == "print(2 + 2)"
    assert code_to_run("```python\nx = 1\nprint(x)\n```\n") == "x = 1\nprint(x)"
    assert code_to_run("```python\nprint(2 + 2)\n") is None  # still open
    assert code_to_run("```python\na\n```\ntext\n```python\nprint(3)\n```") == "print(3)"  # the last block only
    assert code_to_run("```python\na\n```\nThe answer is 4.") is None  # a block earlier, then prose
    text = "x\n```python\nprint(1)\n```\n```output\n1\n```\nThe answer is 1."
    assert [text[a:b] for a, b in output_spans(text)] == ["```output\n1\n```\n"]
    assert strip_outputs(text) == "x\n```python\nprint(1)\n```\nThe answer is 1."


def test_the_sandbox_runs_the_code_and_its_output_is_the_environments(scripted):
    tokenizer, model = scripted
    results, _, loop = run_loop(tokenizer, model, ["Compute 17 * 23 + 4.", "Divide by zero."])
    tokens, reason, written, calls = results[0]
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    assert [call.output for call in calls] == ["395\n"] and calls[0].ok and calls[0].seconds >= 0.6
    assert "```output\n395\n```" in text and text.rstrip().endswith("The answer is 395.") and reason == "stop"
    # the tokens the model did not write are exactly the output block's
    not_written = tokenizer.decode([t for t, w in zip(tokens, written) if not w])
    assert not_written.strip() == "```output\n395\n```"
    _, _, _, failing = results[1]
    assert not failing[0].ok and failing[0].error == "ZeroDivisionError: division by zero"
    assert loop.counters["calls"] == 2 and loop.counters["errors"] == 1


def test_a_row_whose_code_runs_leaves_its_slot_to_the_others(scripted):
    tokenizer, model = scripted
    started = time.perf_counter()
    results, order, loop = run_loop(tokenizer, model, ["Compute 17 * 23 + 4.", "Flip a coin.", "Say no."], slots=1)
    # the first prompt (the longest: the engine starts it first) sleeps 0.6 s in its code; the other two decode in its
    # slot meanwhile and finish first
    assert sorted(order[:2]) == [1, 2] and order[2] == 0
    assert tokenizer.decode(results[1][0], skip_special_tokens=True) == "Heads. The answer is Yes."
    assert loop.counters["continuations"] == 1 and time.perf_counter() - started < 10


def test_the_call_limit_and_the_token_budget_hold(scripted):
    tokenizer, model = scripted
    results, _, loop = run_loop(tokenizer, model, ["Compute 17 * 23 + 4."], tools=ToolSettings(max_calls=0))
    tokens, _, written, calls = results[0]
    assert calls == [] and all(written) and loop.counters["calls"] == 0  # no call: the answer ends at its block
    assert code_to_run(tokenizer.decode(tokens, skip_special_tokens=True)) is not None
    block = len(tokens)  # the code block's tokens
    results, _, _ = run_loop(tokenizer, model, ["Compute 17 * 23 + 4."], max_tokens=block + 3)
    tokens, reason, written, calls = results[0]
    # the budget counts the model's tokens only: 3 after the call, whatever the output's length
    assert sum(written) == block + 3 and len(tokens) > block + 3 and reason == "length" and len(calls) == 1


def test_a_timeout_is_reported_to_the_model(scripted):
    tokenizer, model = scripted
    tools = ToolSettings(limits=Limits(cpu_s=5, wall_s=0.2))
    results, _, _ = run_loop(tokenizer, model, ["Compute 17 * 23 + 4."], tools=tools)
    tokens, _, _, calls = results[0]
    assert not calls[0].ok and calls[0].error.startswith("timeout")
    assert "timeout: still running after 0.2 s" in tokenizer.decode(tokens, skip_special_tokens=True)


def test_the_hf_backend_answers_with_the_tool_and_records_each_call(scripted):
    from tutorlm.backends import Request, Sampling
    from tutorlm.backends.hf import HFBackend
    from tutorlm.config import TeacherConfig

    tokenizer, model = scripted
    backend = HFBackend(TeacherConfig(backend="hf", model="scripted", batch_size=2), model=model, tokenizer=tokenizer)
    requests = [Request([{"role": "user", "content": q}], 0, q) for q in ("Compute 17 * 23 + 4.", "Flip a coin.")]
    results = {}
    backend.run(requests, Sampling(max_tokens=80, tool_calls=2), lambda request, result: results.__setitem__(request.example_id, result))
    tool, plain = results["Compute 17 * 23 + 4."], results["Flip a coin."]
    assert "```output\n395\n```" in tool.text and [call["output"] for call in tool.meta["tools"]] == ["395\n"]
    assert tool.completion_tokens < len(tool.token_ids)  # the model's tokens; the output block's are the sandbox's
    assert plain.meta["tools"] == [] and plain.text == "Heads. The answer is Yes."
    assert backend.counters["tool_calls"] == 1
    # the cache tells answers with the tool from answers without it
    assert Sampling(tool_calls=2).key() != Sampling().key() and "tool_calls" not in Sampling().key()


def test_rows_back_from_a_call_reuse_the_shared_prefix_and_answer_alike(scripted, monkeypatch):
    from tutorlm.models import engine as batching

    tokenizer, model = scripted
    system = [{"role": "system", "content": "Take the last letter of each word and concatenate them. " * 3}]
    prompts = [tokenizer(tokenizer.apply_chat_template(system + [{"role": "user", "content": q}], add_generation_prompt=True,
                                                       tokenize=False), add_special_tokens=False)["input_ids"]
               for q in ("Compute 17 * 23 + 4.", "Divide by zero.", "Flip a coin.")]
    answers = {}
    for extend in (True, False):
        engine = Engine(model, slots=2, pad_token_id=tokenizer.pad_token_id, stop_ids={tokenizer.eos_token_id})
        results = {}
        original_run = engine.run
        monkeypatch.setattr(engine, "run", lambda *a, **k: original_run(*a, **{**k, "arrivals_extend": extend}))
        ToolLoop(engine, tokenizer, ToolSettings()).run(
            prompts, [RowSettings(60, seed=i) for i in range(3)],
            finished=lambda index, tokens, *rest: results.__setitem__(index, tokens))
        answers[extend] = (results, engine.prefix_tokens, engine.counters["prefill_tokens"])
    assert answers[True][0] == answers[False][0]
    assert answers[True][1] >= batching.MIN_PREFIX and answers[False][1] == 0
    assert answers[True][2] < answers[False][2]  # the prefix is prefilled once, not once per row and per call
