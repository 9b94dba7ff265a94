"""SCoRe's corrections ("From Correction to Mastery"): which earlier wrong answer a correcting teacher continues, and
from where. The teacher calls themselves are generate's (`generate.locate_by_teacher` asks the teacher for the first
wrong line where the arithmetic check finds none)."""

from __future__ import annotations

from typing import Any

from tutorlm.backends import Request
from tutorlm.tasks import Task
from tutorlm.tasks.steps import first_error


def lines_before(text: str, line: int) -> str:
    """The lines of `text` before line index `line`, each with its newline: the start a correction continues."""
    return "".join(part + "\n" for part in text.split("\n")[:line])


def correction_requests(task: Task, plan_: Any, rows: list[dict[str, Any]], solved: set[str]
                        ) -> tuple[list[Request], dict[str, dict[str, Any]]]:
    """SCoRe's corrections: for each question of `plan_` (a generate.Plan: its examples and requests) that no earlier
    answer got right, one request that continues an earlier wrong answer (`rows`) from the line before its first
    wrong step (tasks.steps.first_error), with what it continues, by question. Of a question's wrong answers the one
    whose error comes latest is continued (the most of the student's own lines kept); where no wrong step is found
    in any, the teacher writes a whole answer."""
    examples = {example.id: example for example in plan_.examples}
    first = {request.example_id: request for request in plan_.requests if request.sample_index == 0}
    chosen: dict[str, dict[str, Any]] = {}
    for row in rows:
        example = examples.get(row["example_id"])
        if example is None or example.id in solved or example.id not in first:
            continue
        text = row["completion"][-1]["content"]
        if row["finish_reason"] != "length" and task.grade(example, text).correct:
            continue
        line = first_error(example, text)
        candidate = {"row": row["id"], "error_line": line, "lines_kept": line or 0,
                     "prefix": lines_before(text, line) if line else None}
        best = chosen.get(example.id)
        if best is None or (line is not None, line or 0) > (best["error_line"] is not None, best["lines_kept"]):
            chosen[example.id] = candidate
    requests = [Request(first[id_].messages, 0, id_, first[id_].guide_messages, prefix=one.pop("prefix"))
                for id_, one in chosen.items()]
    return requests, chosen
