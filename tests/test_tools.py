"""The Python tool around the models: the prompt's note, the reference solver's tool answers, the verifier reading past
a tool's output, curation's funnel, the loss mask on the output blocks, and the refusals (tests/test_tool_loop.py has
the engine's loop, tests/test_sandbox.py the sandbox)."""

from __future__ import annotations

import pytest

from tiny import QUIET, make_tokenizer, trace
from tutorlm.backends import FatalBackendError, Request, Sampling
from tutorlm.config import CurateConfig, GenerateConfig, Recipe, RunConfig, TaskConfig, TeacherConfig, stage_key
from tutorlm.curate import curate_rows
from tutorlm.generate import generate
from tutorlm.models.tokens import IGNORE, tokenize
from tutorlm.run import read_jsonl
from tutorlm.tasks import TOOL_NOTE, Example, load_task
from tutorlm.verify import extract_answer

TOOL_ANSWER = "Let me compute.\n```python\nprint(6 * 7)\n```\n```output\n42\n```\nSo the answer is 42.\nThe answer is 42."


def test_the_prompt_names_the_tool_only_when_the_task_has_it():
    plain = load_task(TaskConfig(source="multistep_arithmetic"))
    tools = load_task(TaskConfig(source="multistep_arithmetic", tools="python"))
    example = plain.examples("test", 1)[0]
    assert TOOL_NOTE not in plain.prompt(example)[-1]["content"]
    assert TOOL_NOTE in tools.prompt(example)[-1]["content"] and tools.tool_calls == 4
    # runs made before the setting existed keep their stage keys; turning it on changes them
    assert "tools" not in stage_key(TaskConfig()) and stage_key(TaskConfig(tools="python"))["tools"] == "python"
    with pytest.raises(ValueError, match="tool_calls"):
        TaskConfig(tool_calls=-1)


def test_the_verifier_reads_the_models_answer_not_the_tools_output():
    assert extract_answer(TOOL_ANSWER) == "42"
    assert extract_answer("The answer is 5.\n```python\nprint(7)\n```\n```output\nThe answer is 7.\n```\n") == "5"
    assert extract_answer("```output\n7\n```\n") is None  # an output alone states nothing


def test_the_loss_skips_the_tools_output():
    tokenizer = make_tokenizer()
    row = {"prompt": [{"role": "user", "content": "What is 6 * 7?"}], "completion": [{"role": "assistant", "content": TOOL_ANSWER}]}
    item = tokenize(tokenizer, row)
    learnt = tokenizer.decode([t for t, label in zip(item.input_ids, item.labels) if label != IGNORE])
    skipped = tokenizer.decode([t for t, label in zip(item.input_ids, item.labels) if label == IGNORE])
    assert "```output" not in learnt and "42\n```" not in learnt.split("print(6 * 7)")[1].split("So the")[0]
    assert "print(6 * 7)" in learnt and learnt.rstrip().endswith("The answer is 42.<|im_end|>")
    assert skipped.endswith("```output\n42\n```\n")
    plain = tokenize(tokenizer, {**row, "completion": [{"role": "assistant", "content": "The answer is 42."}]})
    assert plain.labels.count(IGNORE) == len(tokenizer(tokenizer.apply_chat_template(
        row["prompt"], add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"])


def test_kd_on_the_teachers_own_tokens_skips_the_tools_output():
    # KD from a stored top-k trains on the teacher's own token ids; the output block among them is the tool's text,
    # which has no distribution of the teacher's, so it gets no label (and no divergence, no cross-entropy)
    from tutorlm.train.kd import teacher_tokens_example

    tokenizer = make_tokenizer()
    row = {"prompt": [{"role": "user", "content": "What is 6 * 7?"}], "completion": [{"role": "assistant", "content": TOOL_ANSWER}],
           "finish_reason": "stop"}
    teacher_ids = tokenizer(TOOL_ANSWER, add_special_tokens=False)["input_ids"]  # as the teacher's engine wrote them
    item = teacher_tokens_example(tokenize(tokenizer, row), row, teacher_ids, tokenizer, 512)
    prompt = item.labels.index(next(label for label in item.labels if label != IGNORE))
    assert item.input_ids[prompt:prompt + len(teacher_ids)] == teacher_ids
    learnt = tokenizer.decode([t for t, label in zip(item.input_ids, item.labels) if label != IGNORE])
    skipped = tokenizer.decode([t for t, label in zip(item.input_ids[prompt:], item.labels[prompt:]) if label == IGNORE])
    assert "```output" not in learnt and "print(6 * 7)" in learnt and "The answer is 42." in learnt
    assert "42\n```" in skipped and "```output" in skipped and "print" not in skipped


def test_curation_drops_answers_whose_code_failed_and_says_why():
    task = load_task(TaskConfig(source="multistep_arithmetic", tools="python"))
    ok = {**trace("a", "42", TOOL_ANSWER), "tools": [{"code": "print(6 * 7)", "output": "42\n", "ok": True, "error": None, "seconds": 0.1}]}
    failed = {**trace("a", "42", "```python\nprint(6 * )\n```\n```output\nSyntaxError: invalid syntax\n```\nThe answer is 42.", sample=1),
              "tools": [{"code": "print(6 * )", "output": "", "ok": False, "error": "SyntaxError: invalid syntax", "seconds": 0.1}]}
    slow = {**trace("a", "42", "```python\nwhile True: pass\n```\n```output\ntimeout\n```\nThe answer is 42.", sample=2),
            "tools": [{"code": "while True: pass", "output": "", "ok": False, "error": "timeout: used its 5 CPU seconds", "seconds": 5.0}]}
    kept, funnel = curate_rows([ok, failed, slow], task, CurateConfig())
    assert [row["id"] for row in kept] == ["a#0"]
    assert funnel["tool_error"] == 1 and funnel["tool_timeout"] == 1 and funnel["kept"] == 1


def test_the_reference_solver_computes_with_the_sandbox(tmp_path):
    recipe = Recipe(run=RunConfig(name="r", output_dir=str(tmp_path)), task=TaskConfig(source="multistep_arithmetic", tools="python"),
                    generate=GenerateConfig(limit=6, cache=False))
    stats = generate(recipe, console=QUIET)
    rows = read_jsonl(recipe.run.path / "traces.jsonl")
    assert stats["tool_calls"] == 6 and stats["tool_errors"] == 0
    task = load_task(recipe.task)
    for row in rows:
        text = row["completion"][-1]["content"]
        assert text.startswith("```python\nprint(") and row["tools"][0]["ok"]
        example = Example(id=row["example_id"], question=row["question"], answer=row["answer"])
        assert f"```output\n{row['answer']}\n```" in text and task.grade(example, text).correct


def test_a_served_teacher_refuses_the_tool_before_any_request():
    from tutorlm.backends.openai import OpenAIBackend

    backend = OpenAIBackend(TeacherConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(FatalBackendError, match="tools python"):
        backend.run([Request([{"role": "user", "content": "q"}])], Sampling(tool_calls=4), lambda request, result: None)


def test_few_shot_demonstrations_show_the_tools_format():
    from tutorlm.generate import plan

    task = load_task(TaskConfig(source="multistep_arithmetic", tools="python"))
    planned = plan(task, GenerateConfig(limit=2, few_shot=1))
    shot = planned.requests[0].messages[1]
    assert shot["role"] == "assistant" and shot["content"].startswith("```python\nprint(")
    assert "```output\n" in shot["content"] and shot["content"].endswith(".")
    assert TOOL_NOTE in planned.requests[0].messages[0]["content"]
    # the student's training prompt is the plain question, as at evaluation: the demonstration is the teacher's
    assert [m["role"] for m in planned.training_prompts[planned.examples[0].id]] == ["user"]
    plain = plan(load_task(TaskConfig(source="multistep_arithmetic")), GenerateConfig(limit=2, few_shot=1))
    assert "```python" not in plain.requests[0].messages[1]["content"]


def test_two_teachers_one_with_python_one_without_give_the_student_both_under_one_prompt(tmp_path):
    """DualDistill: with task.tools python, a teacher with tools none writes its steps out and one with python
    computes; the student's training prompt is the same for both (it offers the tool), and curation keeps both."""
    from tutorlm.curate import curate

    teachers = [TeacherConfig(backend="reference", name="python", tools="python"),
                TeacherConfig(backend="reference", name="text", tools="none")]
    recipe = Recipe(run=RunConfig(name="r", output_dir=str(tmp_path)), task=TaskConfig(source="multistep_arithmetic", tools="python"),
                    teachers=teachers, generate=GenerateConfig(limit=5, cache=False, teacher_mode="all"))
    stats = generate(recipe, console=QUIET)
    rows = read_jsonl(recipe.run.path / "traces.jsonl")
    by_teacher = {name: [row for row in rows if row["teacher"] == name] for name in ("python", "text")}
    assert len(by_teacher["python"]) == len(by_teacher["text"]) == 5 and stats["tool_calls"] == 5
    assert all("```python" in row["completion"][-1]["content"] and row["tools"] for row in by_teacher["python"])
    assert all("```python" not in row["completion"][-1]["content"] and "tools" not in row for row in by_teacher["text"])
    prompts = {row["teacher"]: row["prompt"] for row in rows if row["example_id"] == rows[0]["example_id"]}
    assert prompts["python"] == prompts["text"] and TOOL_NOTE in prompts["text"][-1]["content"]  # what the student reads
    curate(recipe, console=QUIET)
    kept = read_jsonl(recipe.run.path / "curated.jsonl")
    assert len({(row["example_id"], "```python" in row["completion"][-1]["content"]) for row in kept}) == 10
    with pytest.raises(ValueError, match="needs task.tools python"):
        Recipe(task=TaskConfig(source="multistep_arithmetic"), teachers=teachers)
    with pytest.raises(ValueError, match="set task.tools"):
        Recipe(task=TaskConfig(source="multistep_arithmetic", tools="python"), teacher=TeacherConfig(tools="none"))


def test_the_first_thought_starts_each_answer_with_the_tool(tmp_path):
    """generate.first_thought (Agent Distillation): the teacher's first line without the tool begins its answer with it."""
    from tutorlm.generate import first_thought, generate_stage_config

    recipe = Recipe(run=RunConfig(name="r", output_dir=str(tmp_path)), task=TaskConfig(source="multistep_arithmetic", tools="python"),
                    generate=GenerateConfig(limit=4, cache=False, first_thought=True))
    stats = generate(recipe, console=QUIET)
    assert stats["first_thoughts"]["teacher"]["thoughts"] == 4 and stats["tool_calls"] == 4
    task = load_task(recipe.task)
    for row in read_jsonl(recipe.run.path / "traces.jsonl"):
        example = next(e for e in task.examples("train", 4) if e.id == row["example_id"])
        thought, rest = row["completion"][-1]["content"].split("\n", 1)
        assert thought == example.rationale.split("\n")[0] and rest.startswith("```python\n")  # the reference's first step
        assert task.grade(example, row["completion"][-1]["content"]).correct
    assert first_thought("\nThe answer is 4.") is None and first_thought("```python\nprint(1)\n```") is None
    assert first_thought("  First, 2 * 3 = 6.\nThen...") == "First, 2 * 3 = 6."
    off = generate_stage_config(Recipe(task=TaskConfig(source="multistep_arithmetic", tools="python")))
    assert "first_thought" not in off["generate"]  # off: runs from before the setting stay current


def test_a_mix_of_tasks_shows_each_its_own_demonstration_and_evaluates_each_task_apart(tmp_path):
    """DualDistill on a mix: a question's few-shot demonstration comes from its own task (arithmetic's computed with
    the tool, coin flip's in words), and the evaluation reports each task's accuracy and share of answers with Python."""
    from tutorlm.evaluate import evaluate
    from tutorlm.generate import plan

    task = load_task(TaskConfig(source="multistep_arithmetic,coin_flip", tools="python"))
    planned = plan(task, GenerateConfig(limit=4, few_shot=1))
    shots = {example.meta["task"]: request.messages[1]["content"] for example, request in zip(planned.examples, planned.requests)}
    assert shots["multistep_arithmetic"].startswith("```python\nprint(")
    assert "```python" not in shots["coin_flip"] and "heads" in shots["coin_flip"]

    recipe = Recipe(run=RunConfig(name="r", output_dir=str(tmp_path)),
                    task=TaskConfig(source="multistep_arithmetic,coin_flip", tools="python"))
    recipe.eval.limit, recipe.eval.cache = 6, False
    summary = evaluate(recipe, ["teacher"], console=QUIET)["teacher"]  # the reference solver: Python where it can
    assert summary["accuracy"] == 1.0 and summary["tool_use_rate"] == 0.5
    parts = summary["by_task"]
    assert parts["multistep_arithmetic"]["examples"] == parts["coin_flip"]["examples"] == 3
    assert parts["multistep_arithmetic"]["tool_use_rate"] == 1.0 and parts["coin_flip"]["tool_use_rate"] == 0.0
    assert parts["coin_flip"]["accuracy"] == 1.0
