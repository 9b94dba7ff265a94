"""Recipes and flags map 1:1 onto the stage dataclasses; mistakes name the key and the file."""

from __future__ import annotations

import pytest

from tutorlm.config import ConfigError, Recipe, config_hash, to_dict
from tutorlm.recipe_io import load_recipe, parse_override_args


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_recipe_fields_map_onto_dataclasses(tmp_path):
    path = write(tmp_path, "run:\n  name: letters\ntask:\n  source: last_letters\n  options: {num_words: 5}\n  seed: 3\n")
    recipe = load_recipe(path)
    assert recipe.run.name == "letters" and recipe.task.options == {"num_words": 5} and recipe.task.seed == 3
    assert recipe.run.path.as_posix() == "runs/letters"


def test_defaults_without_a_recipe_and_round_trip():
    recipe = load_recipe()
    assert recipe == Recipe()
    assert load_recipe(None, [("task.seed", "4")]).task.seed == 4
    from tutorlm.recipe_io import from_dict

    assert from_dict(Recipe, to_dict(recipe), "dict") == recipe


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, "task:\n  sourc: coin_flip\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml: unknown key task\.sourc \(did you mean task\.source\?\)"):
        load_recipe(path)
    with pytest.raises(ConfigError, match=r"unknown key tsk"):
        load_recipe(write(tmp_path, "tsk: {}\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [("task:\n  seed: abc\n", r"task\.seed must be an integer, got 'abc'"),
     ("task:\n  seed: true\n", r"task\.seed must be an integer, got True"),
     ("task:\n  options: [1, 2]\n", r"task\.options must be a mapping"),
     ("task:\n  answer_type: numbr\n", r"task\.answer_type must be one of 'auto', 'number'"),
     ("task: 3\n", r"task must be a mapping"),
     ("- a\n- b\n", r"a recipe must be a mapping"),
     ("task: [\n", r"invalid YAML"),
     ("run:\n  name: a/b\n", r"run\.name must be a plain directory name")],
)
def test_wrong_types_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(write(tmp_path, text))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


def test_command_line_overrides_parse_by_field_type(tmp_path):
    path = write(tmp_path, "task:\n  source: coin_flip\n")
    pairs = parse_override_args(
        ["--task.seed", "7", "--task.options.num_people=6", "--task.name", "123", "--task.fallback", "false",
         "--task.question-field", "q", "--task.splits", "{test: t.jsonl}", "--task.hub_config", "none"]
    )
    recipe = load_recipe(path, pairs)
    assert recipe.task.seed == 7 and recipe.task.options == {"num_people": 6}
    assert recipe.task.name == "123"  # text fields stay text
    assert recipe.task.fallback is False and recipe.task.question_field == "q"
    assert recipe.task.splits == {"test": "t.jsonl"} and recipe.task.hub_config is None
    assert recipe.task.source == "coin_flip"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--task.sed", "1"], r"unknown setting --task\.sed \(did you mean --task\.seed\?\)"),
     (["--task.seed", "x"], r"task\.seed must be an integer"),
     (["--task.seed"], r"--task\.seed needs a value"),
     (["stray"], r"unexpected argument 'stray'"),
     (["--nosection", "1"], r"unexpected argument")],
)
def test_bad_overrides(args, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, parse_override_args(args))


def test_config_hash_tracks_values():
    assert config_hash(Recipe()) == config_hash(Recipe())
    changed = load_recipe(None, [("task.seed", "1")])
    assert config_hash(changed) != config_hash(Recipe())


def test_scientific_notation_for_number_fields(tmp_path):
    # PyYAML reads "1e-4" as text (YAML 1.1); number fields accept it from files and flags alike.
    recipe = load_recipe(write(tmp_path, "train:\n  lr: 1e-4\n"), parse_override_args(["--teacher.timeout_s", "3e1"]))
    assert recipe.train.lr == 1e-4 and recipe.teacher.timeout_s == 30.0
    with pytest.raises(ConfigError, match=r"train\.lr must be a number or null, got 'fast'"):
        load_recipe(None, parse_override_args(["--train.lr", "fast"]))


@pytest.mark.parametrize(
    ("args", "field", "expected"),
    [(["--eval.models", "[base, student]"], "eval.models", ["base", "student"]),
     (["--eval.models", "base"], "eval.models", ["base"]),
     (["--eval.models", "base,student"], "eval.models", ["base", "student"]),
     (["--generate.stop", '["\\n\\n", "Question:"]'], "generate.stop", ["\n\n", "Question:"]),
     (["--train.lora_target_modules", "[q_proj, v_proj]"], "train.lora_target_modules", ["q_proj", "v_proj"]),
     (["--train.lora_target_modules", "all-linear"], "train.lora_target_modules", "all-linear"),
     (["--teacher.base_url", "[http://a:8000/v1, http://b:8000/v1]"], "teacher.base_url", ["http://a:8000/v1", "http://b:8000/v1"]),
     (["--teacher.base_url", "http://a:8000/v1"], "teacher.base_url", "http://a:8000/v1"),
     (["--teacher.model", "null"], "teacher.model", None),
     (["--task.splits", "{test: t.jsonl}"], "task.splits", {"test": "t.jsonl"})],
)
def test_every_field_type_reads_from_the_command_line(args, field, expected):
    section, name = field.split(".")
    recipe = load_recipe(None, parse_override_args(args))
    assert getattr(getattr(recipe, section), name) == expected


def test_a_new_task_source_drops_the_old_tasks_options(tmp_path):
    path = write(tmp_path, "task:\n  source: coin_flip\n  options: {num_people: 4}\n")
    recipe = load_recipe(path, parse_override_args(["--task.source", "last_letters"]))
    assert recipe.task.source == "last_letters" and recipe.task.options == {}
    recipe = load_recipe(path, parse_override_args(["--task.source", "last_letters", "--task.options.num_words", "3"]))
    assert recipe.task.options == {"num_words": 3}
    recipe = load_recipe(path, parse_override_args(["--task.source", "coin_flip"]))  # the same task keeps them
    assert recipe.task.options == {"num_people": 4}
    # and the README's own example builds its task
    from tutorlm.recipe_io import default_recipe_path
    from tutorlm.tasks import load_task

    task = load_task(load_recipe(default_recipe_path(), parse_override_args(["--task.source", "last_letters"])).task)
    assert task.name == "last_letters" and task.examples("test", 2)


def test_a_mistyped_task_name_says_unknown_task():
    from tutorlm.tasks import DataError, load_task

    recipe = load_recipe(None, parse_override_args(["--task.source", "coinflip", "--task.options.num_people", "3"]))
    with pytest.raises(DataError, match=r"unknown task 'coinflip' \(did you mean coin_flip\?\)"):
        load_task(recipe.task)
