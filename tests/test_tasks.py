"""Built-in generators: determinism, disjoint splits, gold answers re-derived from the question text."""

from __future__ import annotations

import ast
import operator
import re

import pytest

from tutorlm.config import TaskConfig
from tutorlm.tasks import GENERATORS, DataError, load_task, split_of
from tutorlm.verify import LETTERS


def _last_letters(question: str) -> str:
    return "".join(word[-1] for word in re.findall(r'"([a-z]+)"', question))


def _coin_flip(question: str) -> str:
    flips = len(re.findall(r"\w+ flips the coin\.", question))
    return "Yes" if flips % 2 == 0 else "No"


def _arithmetic(question: str) -> str:
    a, op, b = re.fullmatch(r"What is (\d+) ([+*-]) (\d+)\?", question).groups()
    return str({"+": operator.add, "-": operator.sub, "*": operator.mul}[op](int(a), int(b)))


def _multistep(question: str) -> str:
    expression = re.fullmatch(r"What is the value of (.*)\?", question).group(1)

    def evaluate(node: ast.AST) -> int:  # only the node types the task can produce
        if isinstance(node, ast.Expression):
            return evaluate(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -evaluate(node.operand)
        if isinstance(node, ast.BinOp):
            ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
            return ops[type(node.op)](evaluate(node.left), evaluate(node.right))
        raise AssertionError(f"unexpected node {node!r}")

    return str(evaluate(ast.parse(expression, mode="eval")))


def _object_tracking(question: str, choices: list[str]) -> str:
    holding = dict(re.findall(r"(\w+) has an? (\w+) ball", question))
    for a, b in re.findall(r"(\w+) and (\w+) swap balls", question):
        holding[a], holding[b] = holding[b], holding[a]
    target = re.search(r"who has the (\w+) ball\?", question).group(1)
    owner = next(person for person, color in holding.items() if color == target)
    return LETTERS[choices.index(owner)]


def _deduction(question: str) -> str:
    is_a = dict(re.findall(r"Every (\w+) is an? (\w+)\.", question))
    has = {category: not negated for category, negated, _ in re.findall(r"Every (\w+) is (not )?(\w+)\.", question)
           if not re.match(r"an? ", _)}
    entity, category = re.search(r"(\w+) is an? (\w+)\. True or false", question).groups()
    negative_claim = re.search(r"True or false: \w+ is not ", question) is not None
    while category in is_a:
        category = is_a[category]
    holds = has[category]
    return "True" if holds != negative_claim else "False"


def rederive(name: str, example) -> str:
    if name == "last_letters":
        return _last_letters(example.question)
    if name == "coin_flip":
        return _coin_flip(example.question)
    if name == "arithmetic":
        return _arithmetic(example.question)
    if name == "multistep_arithmetic":
        return _multistep(example.question)
    if name == "object_tracking":
        return _object_tracking(example.question, example.choices)
    return _deduction(example.question)


@pytest.mark.parametrize("name", list(GENERATORS))
def test_gold_answers_rederived_from_question(name):
    task = load_task(TaskConfig(source=name))
    for example in task.examples("train", 60) + task.examples("test", 20):
        assert rederive(name, example) == example.answer, example.question


@pytest.mark.parametrize("name", list(GENERATORS))
def test_reference_solutions_end_in_answer_line_and_verify(name):
    task = load_task(TaskConfig(source=name))
    for example in task.examples("test", 30):
        last_line = example.rationale.strip().splitlines()[-1]
        assert last_line.startswith("The answer is "), last_line
        assert task.grade(example, example.rationale).correct
        # ... and a wrong final line does not verify.
        wrong = example.rationale.rsplit("The answer is", 1)[0] + "The answer is zzz."
        assert not task.grade(example, wrong).correct


@pytest.mark.parametrize("name", list(GENERATORS))
def test_same_seed_same_data_other_seed_other_data(name):
    task = load_task(TaskConfig(source=name))
    first, again = task.examples("train", 20, seed=1), task.examples("train", 20, seed=1)
    assert [e.to_dict() for e in first] == [e.to_dict() for e in again]
    other = task.examples("train", 20, seed=2)
    assert [e.question for e in other] != [e.question for e in first]


@pytest.mark.parametrize("name", list(GENERATORS))
def test_splits_are_disjoint_across_seeds(name):
    task = load_task(TaskConfig(source=name))
    train = {e.question for seed in (0, 1, 2) for e in task.examples("train", 60, seed=seed)}
    test = {e.question for seed in (0, 1, 2) for e in task.examples("test", 30, seed=seed)}
    validation = {e.question for e in task.examples("validation", 30)}
    assert not train & test and not train & validation and not test & validation
    assert all(split_of(q) == "test" for q in test)


def test_examples_within_a_split_are_distinct_with_stable_ids():
    task = load_task(TaskConfig(source="arithmetic", options={"digits": 2}))
    examples = task.examples("train", 200)
    assert len({e.question for e in examples}) == 200
    assert len({e.id for e in examples}) == 200
    assert examples[0].id == task.examples("train", 1)[0].id


def test_difficulty_settings_change_the_questions():
    five = load_task(TaskConfig(source="last_letters", options={"num_words": 5})).examples("test", 5)
    assert all(len(e.answer) == 5 for e in five)
    deep = load_task(TaskConfig(source="deduction", options={"hops": 6})).examples("test", 5)
    assert all(e.rationale.count(", so ") == 7 for e in deep)
    four = load_task(TaskConfig(source="object_tracking", options={"num_people": 5})).examples("test", 5)
    assert all(len(e.choices) == 5 for e in four)


def test_too_small_a_question_space_is_a_clear_error():
    task = load_task(TaskConfig(source="arithmetic", options={"digits": 1, "operations": ["+"]}))
    with pytest.raises(DataError, match="too few different questions"):
        task.examples("test", 500)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"num_wrds": 3}, "no setting 'num_wrds'"), ({"num_words": "three"}, "must be an integer"),
     ({"num_words": 0}, "between 1 and 20")],
)
def test_bad_generator_settings(options, message):
    with pytest.raises(DataError, match=message):
        load_task(TaskConfig(source="last_letters", options=options))


def test_prompt_asks_for_the_answer_line_and_lists_choices():
    task = load_task(TaskConfig(source="object_tracking"))
    example = task.examples("test", 1)[0]
    messages = task.prompt(example, system_prompt="Be careful.")
    assert messages[0] == {"role": "system", "content": "Be careful."}
    assert messages[-1]["role"] == "user"
    assert "(A) " + example.choices[0] in messages[-1]["content"]
    assert '"The answer is" followed by the letter of your choice in parentheses.' in messages[-1]["content"]
    assert "X" not in messages[-1]["content"].split("\n")[-1]  # no placeholder for the model to copy
    shots = task.examples("train", 2)
    with_shots = task.prompt(example, few_shot=shots)
    assert [m["role"] for m in with_shots] == ["user", "assistant", "user", "assistant", "user"]
    assert with_shots[1]["content"] == shots[0].rationale


def test_unknown_split_is_an_error():
    with pytest.raises(DataError, match="unknown split"):
        load_task(TaskConfig(source="coin_flip")).examples("dev", 3)


def test_a_mix_takes_each_task_in_turn_with_its_own_ids_prompts_and_grading():
    mix = load_task(TaskConfig(source="multistep_arithmetic,coin_flip"))
    arith, coins = (load_task(TaskConfig(source=name)) for name in ("multistep_arithmetic", "coin_flip"))
    examples = mix.examples("train", 5)
    assert [e.meta["task"] for e in examples] == ["multistep_arithmetic", "coin_flip"] * 2 + ["multistep_arithmetic"]
    # the same questions and ids as the single tasks' (so cached answers and evaluations carry over)
    assert [e.id for e in examples[0::2]] == [e.id for e in arith.examples("train", 3)]
    assert [e.id for e in examples[1::2]] == [e.id for e in coins.examples("train", 2)]
    assert [e.id for e in mix.examples("train", 4)] == [e.id for e in examples[:4]]  # a prefix, as for one task
    number, flip = examples[0], examples[1]
    assert mix.prompt(number) == arith.prompt(number) and mix.prompt(flip) == coins.prompt(flip)
    assert mix.answer_type_of(flip) == "boolean" and mix.answer_type_of(number) == "number"
    wrong = "no" if flip.answer.lower() == "yes" else "yes"
    assert mix.grade(flip, f"The answer is {flip.answer}.").correct and not mix.grade(flip, f"The answer is {wrong}.").correct
    assert mix.grade(number, f"The answer is {number.answer}.").correct
    assert mix.name == "multistep_arithmetic+coin_flip"


def test_a_mix_gives_options_per_task_and_names_what_is_wrong():
    mix = load_task(TaskConfig(source="coin_flip,last_letters", options={"last_letters": {"num_words": 5}}))
    words = mix.examples("test", 2)[1]
    assert words.meta["task"] == "last_letters" and len(words.answer) == 5
    with pytest.raises(DataError, match="not one of coin_flip, last_letters"):
        load_task(TaskConfig(source="coin_flip,last_letters", options={"num_words": 5}))
    with pytest.raises(DataError, match="each task once"):
        load_task(TaskConfig(source="coin_flip,coin_flip"))
    with pytest.raises(DataError, match="unknown task 'coin_flp'.*did you mean coin_flip"):
        load_task(TaskConfig(source="multistep_arithmetic,coin_flp"))
