"""`train.objective: kd` — the student matches the teacher's next-token distributions on the rationales.

    tutorlm generate --out runs/x --generate.top_logprobs 20          # a local teacher stores its top-20 by token id
    tutorlm train --out runs/x --train.objective kd [--train.kd_divergence forward_kl|reverse_kl|jsd|skew_kl|skew_reverse_kl]
        [--train.kd_beta 0.5] [--train.kd_temperature 1.0] [--train.kd_ce_weight 0.0] [--train.kd_source auto|stored|teacher]

Method: Hinton et al. (2015) on sequences (word-level KD, Kim & Rush 2016): at every completion token
of a curated rationale the student's distribution is pulled towards the teacher's, by the divergence
of `train/losses.py`, mixed with the cross-entropy on the rationale's own token:
loss = (1 − w) · divergence + w · CE. The teacher's distributions come from one of three places:

- **stored**: the top-k that `generate --generate.top_logprobs K` wrote to the traces (by token id, with
  the teacher's tokenizer named in each row). Nothing runs but the student.
- **teacher, one vocabulary**: a local teacher (`teacher.backend hf`) with the student's tokenizer
  re-scores each batch's rationales in the training step (one no-grad forward, its vocabulary projection
  only at completion positions, a chunk at a time): the exact full distribution, at any temperature.
- **teacher, another vocabulary**: the local teacher scores every rationale once, before training, under
  its own tokenizer and chat template, keeping its top `train.kd_top_k`; then as stored.

A top-k is compared with a tail bucket (losses.topk_divergence) and put on the student's tokens by
train/align.py: with one tokenizer every token has its target; with two, tokens cut at the same
character offsets are distilled (the teacher's candidates mapped to the student's vocabulary by text)
and the others are trained on cross-entropy alone. The pre-flight check compares the two tokenizers,
says which path applies, and the train stats record the share of tokens and probability mass aligned.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from tutorlm.config import config_hash
from tutorlm.errors import PreflightError
from tutorlm.models import topk
from tutorlm.models.load import load_tokenizer, model_fingerprint
from tutorlm.models.score import score_rows
from tutorlm.models.tokens import (
    IGNORE,
    Tokenized,
    identity_head,
    labelled_positions,
    plain_output_head,
    prompt_length,
    render,
    without_outputs,
)
from tutorlm.progress import StageProgress
from tutorlm.run import atomic_write_text
from tutorlm.train.align import Aligned, TeacherTokens, VocabularyMap, align, token_spans
from tutorlm.train.losses import NO_TOKEN, linear_cross_entropy, linear_kd_loss, token_logprobs
from tutorlm.train.teacher import (
    compare_tokenizers,
    describe,
    load_teacher,
    local_teacher,
    model_and_head,
    output_rows,
    teacher_model_config,
)

SCORES = "kd_teacher_topk.jsonl"  # a teacher with another vocabulary: its top-k on the curated rationales


class KD:
    """The objective: `prepare` finds the teacher's distributions (module docstring), `loss` distills a batch."""

    def __init__(self, recipe: Any) -> None:
        self.config = recipe.train
        self.teacher: Any = None  # a local teacher with the student's vocabulary, run in every step
        self.scoring_s: float | None = None  # the time a teacher with another vocabulary took to score the rationales
        self.kind = ""

    def prepare(self, recipe: Any, model: Any, tokenizer: Any, rows: list[dict[str, Any]], examples: list[Tokenized],
                device: Any, console: Any) -> dict[str, Any]:
        config = self.config
        source = self._source(recipe, rows)
        if source == "stored":
            stored = [row for row in rows if topk.FIELD in row]
            names = sorted({str(row.get("tokenizer")) for row in stored})
            if len(names) > 1:
                raise PreflightError(f"the curated rows' top-k come from {len(names)} tokenizers ({', '.join(names)}); "
                                     "distil from one teacher's traces at a time")
            teacher_name, teacher_tokenizer = names[0], _load_teacher_tokenizer(recipe, names[0])
            comparison = compare_tokenizers(tokenizer, teacher_tokenizer, output_rows(model), None)
            teacher_tokens = {str(row["id"]): _stored_tokens(row) for row in stored}
        else:
            teacher_name = config.kd_teacher or recipe.teacher.model
            teacher_config = teacher_model_config(recipe)
            # The tokenizers alone decide whether the path is possible: checked before the teacher's weights load.
            early = compare_tokenizers(tokenizer, load_tokenizer(teacher_config.model, teacher_config.gguf_file,
                                                                 trust_remote_code=teacher_config.trust_remote_code))
            if not early["same_vocabulary"] and config.kd_temperature != 1.0:
                raise PreflightError("train.kd_temperature: with another vocabulary the teacher is known by its top-k, "
                                     "which takes temperature 1")
            teacher_model, teacher_tokenizer = load_teacher(recipe, device)
            comparison = compare_tokenizers(tokenizer, teacher_tokenizer, output_rows(model), output_rows(teacher_model))
            if comparison["same_vocabulary"]:  # the exact distribution, computed in every step
                self.teacher, self.kind = teacher_model, "teacher"
                console.print(f"kd: teacher {teacher_name} re-scores every batch: {describe(comparison)}; {self._settings()}")
                return {"kd": {"source": "teacher", "path": "same vocabulary", "tokenizers": comparison}}
            teacher_tokens = self._scores(recipe, teacher_model, teacher_tokenizer, rows, console)
            del teacher_model
        self.kind = "topk"
        stats = self._attach(source, comparison, teacher_tokens, teacher_tokenizer, tokenizer, rows, examples)
        console.print(f"kd: {source} top-k from {teacher_name}: {stats['path']}; "
                      f"{stats['aligned_token_share']:.0%} of the student's completion tokens have a teacher target "
                      f"({stats['mapped_mass_share']:.0%} of its top-k mass maps), the rest learn by cross-entropy; "
                      f"{self._settings()}")
        return {"kd": stats}

    def _source(self, recipe: Any, rows: list[dict[str, Any]]) -> str:
        """stored or teacher, from train.kd_source and what the rows and the recipe offer."""
        config = self.config
        stored = any(topk.FIELD in row for row in rows)
        local = local_teacher(recipe)
        source = config.kd_source
        if source == "auto":
            if not stored and not local:
                raise PreflightError(_no_stored_message(rows))
            source = "stored" if stored else "teacher"
        if source == "stored":
            if not stored:
                raise PreflightError(_no_stored_message(rows))
            if config.kd_temperature != 1.0:
                raise PreflightError("train.kd_temperature: a stored top-k takes temperature 1 (it cannot be re-tempered "
                                     "without the rest of the distribution); use a local teacher (kd_source teacher)")
        return source

    def _attach(self, source: str, comparison: dict[str, Any], teacher_tokens: dict[str, TeacherTokens], teacher_tokenizer: Any,
                tokenizer: Any, rows: list[dict[str, Any]], examples: list[Tokenized]) -> dict[str, Any]:
        """Put the teacher's top-k on each example's completion tokens (in place); the shares that found a target."""
        exact = source == "stored" and comparison["same_vocabulary"]
        vocabulary = VocabularyMap(tokenizer, None if comparison["same_vocabulary"] else teacher_tokenizer)
        path = ("same vocabulary (the teacher's own token ids)" if exact else "same vocabulary" if comparison["same_vocabulary"]
                else "cross-tokenizer (aligned by character offsets)")
        totals = {"tokens": 0, "aligned": 0, "mapped_mass": 0.0, "total_mass": 0.0, "rows_without_targets": 0}
        rows_by_id = {str(row["id"]): row for row in rows}
        for index, example in enumerate(examples):
            teacher = teacher_tokens.get(example.example_id)
            if teacher is not None and exact:
                # One vocabulary: train on the exact tokens the teacher wrote, where its distributions were taken
                # (re-tokenizing the text can cut it otherwise, and then the contexts differ).
                example = examples[index] = teacher_tokens_example(example, rows_by_id[example.example_id], teacher.token_ids,
                                                                    tokenizer, self.config.max_length)
            prompt = prompt_length(example.labels)
            completion = example.input_ids[prompt:]
            totals["tokens"] += len(completion)
            if teacher is None:
                totals["rows_without_targets"] += 1
                continue
            aligned = _own_tokens(teacher, len(completion)) if exact else align(tokenizer, completion, teacher_tokenizer, teacher, vocabulary)
            k = aligned.ids.shape[1]
            example.teacher_ids = torch.cat([torch.full((prompt, k), NO_TOKEN, dtype=torch.long), aligned.ids])
            example.teacher_logprobs = torch.cat([torch.full((prompt, k), float("-inf")), aligned.logprobs])
            totals["aligned"] += aligned.aligned
            totals["mapped_mass"] += aligned.mapped_mass
            totals["total_mass"] += aligned.total_mass
        if not totals["aligned"]:
            raise PreflightError(f"no completion token of the student lines up with a teacher token ({path}); "
                                 "check that the traces were written by this teacher")
        return {"source": source, "path": path, "tokenizers": comparison,
                "aligned_token_share": round(totals["aligned"] / max(totals["tokens"], 1), 4),
                "mapped_mass_share": round(totals["mapped_mass"] / max(totals["total_mass"], 1e-12), 4),
                "rows_without_targets": totals["rows_without_targets"], "teacher_scoring_s": self.scoring_s,
                "teacher_tokens": sum(len(teacher.token_ids) for teacher in teacher_tokens.values())}

    def _scores(self, recipe: Any, model: Any, tokenizer: Any, rows: list[dict[str, Any]], console: Any) -> dict[str, TeacherTokens]:
        """The teacher's top-k on every rationale, under its own tokenizer: scored once, kept in the run directory
        (RUN_DIR/kd_teacher_topk.jsonl) so that a resumed or repeated run with the same teacher and rows does not
        pay for it again."""
        config = self.config
        name = config.kd_teacher or recipe.teacher.model
        path = recipe.run.path / SCORES
        model_config = teacher_model_config(recipe)  # the weights and precision that scored, not only the name
        key = config_hash({"teacher": model_fingerprint(model_config.model, model_config.gguf_file),
                           "dtype": model_config.dtype, "top_k": config.kd_top_k, "rows": [[row["id"], row["prompt"], row["completion"]] for row in rows]})
        if path.exists():
            lines = path.read_text().splitlines()
            if lines and json.loads(lines[0]).get("key") == key:
                console.print(f"kd: the teacher's top-{config.kd_top_k} on these {len(rows)} rationales is in {path}; not scoring again")
                return {item["id"]: TeacherTokens(item["token_ids"], *topk.unpack(item[topk.FIELD])[:2])
                        for item in map(json.loads, lines[1:])}
        console.print(f"kd: teacher {name} has another vocabulary; scoring {len(rows)} rationales once "
                      f"(top {config.kd_top_k}) before training")
        started = time.perf_counter()
        with StageProgress(console, "kd: teacher scores", len(rows)) as progress:
            scored = score_rows(model, tokenizer, rows, top_k=config.kd_top_k, batch_size=config.batch_size,
                                on_batch=lambda done: progress.advance(done - progress.completed))
        self.scoring_s = round(time.perf_counter() - started, 1)
        console.print(f"kd: scored in {self.scoring_s:.0f} s")
        tokens = {str(row["id"]): TeacherTokens(item.token_ids, torch.tensor(item.top_ids), torch.tensor(item.top_logprobs))
                  for row, item in zip(rows, scored)}
        lines = [json.dumps({"key": key, "teacher": name, "top_k": config.kd_top_k})]
        lines += [json.dumps({"id": id_, "token_ids": item.token_ids, topk.FIELD: topk.pack(item.top_ids, item.top_logprobs)})
                  for id_, item in tokens.items()]
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        return tokens

    def _settings(self) -> str:
        c = self.config
        return f"{c.kd_divergence} (beta {c.kd_beta}, temperature {c.kd_temperature}, CE weight {c.kd_ce_weight})"

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        if self.kind == "teacher":
            return kd_loss(model, self.teacher, batch, self.config)
        return topk_kd_loss(model, batch, self.config)


def teacher_tokens_example(example: Tokenized, row: dict[str, Any], teacher_ids: list[int], tokenizer: Any,
                            max_length: int) -> Tokenized:
    """The student's prompt, then the teacher's completion tokens, then (when the teacher stopped) the student
    template's end of turn, which has no teacher target and is learnt by cross-entropy."""
    prompt = prompt_length(example.labels)
    _, completion_text = render(tokenizer, row["prompt"], row["completion"])
    content = row["completion"][-1]["content"]
    suffix: list[int] = []
    if row.get("finish_reason", "stop") == "stop" and completion_text.startswith(content):
        suffix = tokenizer(completion_text[len(content):], add_special_tokens=False)["input_ids"]
    completion = list(teacher_ids) + suffix
    labels = completion
    if "```output" in content:  # a tool's output: the teacher did not write it (its tokens have no distribution)
        text, spans = token_spans(tokenizer, teacher_ids)
        labels = without_outputs(teacher_ids, spans, text) + suffix
    input_ids = (example.input_ids[:prompt] + completion)[:max_length]
    labels = ([IGNORE] * prompt + labels)[:max_length]
    return Tokenized(input_ids, labels, example.example_id)


def _own_tokens(teacher: TeacherTokens, length: int) -> Aligned:
    """The targets of a completion that starts with the teacher's own tokens: its top-k as it is, none after it."""
    count = min(length, len(teacher.token_ids))
    k = teacher.top_ids.shape[1]
    ids = torch.cat([teacher.top_ids[:count], torch.full((length - count, k), NO_TOKEN, dtype=torch.long)])
    logprobs = torch.cat([teacher.top_logprobs[:count].float(), torch.full((length - count, k), float("-inf"))])
    mass = float(teacher.top_logprobs[:count].float().exp().sum())
    return Aligned(ids, logprobs, count, mass, mass)


def _no_stored_message(rows: list[dict[str, Any]]) -> str:
    if any("logprobs" in row for row in rows):
        return ("train.objective kd: the traces' log-probabilities name tokens by text only (a server teacher), and "
                "distillation needs token ids: regenerate with --generate.token_ids true (a vLLM server) or a local "
                "teacher (teacher.backend hf) and --generate.top_logprobs 20, or name a local model to re-score them: "
                "train.kd_teacher PATH")
    return ("train.objective kd: the curated rationales carry no teacher log-probabilities; regenerate them with "
            "`tutorlm generate --generate.top_logprobs 20` (a local teacher, teacher.backend hf), or name a local model "
            "to re-score them: train.kd_teacher PATH (or teacher.backend hf)")


def _load_teacher_tokenizer(recipe: Any, name: str) -> Any:
    """The tokenizer a stored top-k's ids index: train.kd_teacher (e.g. a local copy of a served model), the recipe's
    teacher when the traces name it, else the name the traces record."""
    teacher = recipe.teacher
    if recipe.train.kd_teacher:
        return load_tokenizer(recipe.train.kd_teacher)
    if teacher.model and str(teacher.model) == name and teacher.backend == "hf":
        return load_tokenizer(teacher.model, teacher.gguf_file, trust_remote_code=teacher.trust_remote_code)
    return load_tokenizer(name, trust_remote_code=teacher.trust_remote_code)


def _stored_tokens(row: dict[str, Any]) -> TeacherTokens:
    ids, logprobs, _ = topk.unpack(row[topk.FIELD])
    token_ids = row.get("completion_token_ids")
    if token_ids is None or len(token_ids) != ids.shape[0]:
        raise PreflightError(f"curated row {row.get('id')}: its {topk.FIELD} has {ids.shape[0]} positions but "
                             f"completion_token_ids has {len(token_ids or [])}; regenerate the traces")
    return TeacherTokens(list(token_ids), ids, logprobs)


def topk_kd_loss(student: Any, batch: dict[str, torch.Tensor], config: Any) -> tuple[torch.Tensor, int]:
    """KD against the batch's teacher top-k (`teacher_ids`, `teacher_logprobs`, (B, T, k)); tokens without a
    target are trained on cross-entropy alone. Returns (the mean over completion tokens, their count)."""
    inner, head = model_and_head(student)
    inputs, positions, chosen = labelled_positions(batch)
    wanted = chosen != IGNORE  # (B, K)
    ids = batch["teacher_ids"][:, 1:][:, positions][wanted]  # (N, k): the target of the token at t + 1
    logprobs = batch["teacher_logprobs"][:, 1:][:, positions][wanted]  # (N, k)
    with identity_head(inner):
        hidden = student(**inputs, logits_to_keep=positions, use_cache=False).logits[wanted]  # (N, H)
    targets = chosen[wanted]
    # One projection per chunk gives the divergence and the cross-entropy share (linear_kd_loss with targets).
    loss = linear_kd_loss(hidden, head.weight, (ids, logprobs), kind=config.kd_divergence, beta=config.kd_beta,
                          targets=targets, ce_weight=config.kd_ce_weight)
    count = targets.numel()
    return loss, count


HiddenOf = Callable[[Any, Any], "tuple[torch.Tensor, torch.Tensor]"]  # (model, its inner model) -> (hidden states, targets)


def kd_loss(student: Any, teacher: Any, batch: dict[str, torch.Tensor] | None, config: Any,
            metrics: dict[str, float] | None = None, hidden_of: HiddenOf | None = None) -> tuple[torch.Tensor, int]:
    """(the KD objective over the batch's completion tokens, their count); neither model's full logits exist.

    `metrics`, when given, receives the summed log-ratio log q − log p of the batch's own tokens (`reverse_kl`, a
    sample estimate of KL(q || p) when the student wrote them), and how often both models' top-1 agree (`agree`
    of `top`), read off the loss's own projections (no more of either model). `hidden_of(model, inner)`, when given,
    runs each model instead of the batch's padded rows (`batch` is then unused) and returns its final hidden states
    at the positions that predict each completion token and those tokens; on-policy distillation passes
    `rollout.completion_hidden`, which runs the prompts' shared start once."""
    inner, student_head = model_and_head(student)
    teacher_head = plain_output_head(teacher, dequantize=True)  # an int8 teacher's head too
    if teacher_head is None:
        raise PreflightError("train.objective kd needs models whose logits are hidden @ weight.T (no soft-capping or bias)")
    if hidden_of is None:
        inputs, positions, chosen = labelled_positions(batch)
        wanted = chosen != IGNORE  # (B, K)

        def hidden_of(model: Any, inner: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return model(**inputs, logits_to_keep=positions, use_cache=False).logits[wanted], chosen[wanted]  # (N, H), (N,)

    with identity_head(inner):
        student_hidden, targets = hidden_of(student, inner)
    with torch.no_grad(), identity_head(teacher):
        teacher_hidden, _ = hidden_of(teacher, teacher)
    # Rows past the shorter projection are embedding padding (no token has those ids): both sides drop them.
    rows = min(student_head.weight.shape[0], teacher_head.weight.shape[0])
    student_weight, teacher_weight = student_head.weight[:rows], teacher_head.weight[:rows]

    # the metrics come from the loss's own projections: (log-probs of the targets, the argmax) per chunk of each model
    student_seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    teacher_seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def teacher_logprobs(start: int, end: int) -> torch.Tensor:
        logits = (teacher_hidden[start:end] @ teacher_weight.to(teacher_hidden.dtype).T).float()  # (c, V)
        if metrics is not None:
            teacher_seen.append(token_logprobs(logits, targets[start:end]))
        return F.log_softmax(logits / config.kd_temperature, dim=-1)

    def observe(logits: torch.Tensor, start: int, end: int) -> None:
        student_seen.append(token_logprobs(logits, targets[start:end]))

    settings = dict(kind=config.kd_divergence, beta=config.kd_beta, temperature=config.kd_temperature,
                    observe=observe if metrics is not None else None)
    both = config.kd_ce_weight and rows == student_head.weight.shape[0]  # both shares from one projection
    if both:
        loss = linear_kd_loss(student_hidden, student_weight, teacher_logprobs, **settings, targets=targets,
                              ce_weight=config.kd_ce_weight)
    else:
        loss = linear_kd_loss(student_hidden, student_weight, teacher_logprobs, **settings)
    if metrics is not None:
        (student_chosen, student_best), (teacher_chosen, teacher_best) = (
            (torch.cat([chunk[0] for chunk in seen]), torch.cat([chunk[1] for chunk in seen]))
            for seen in (student_seen, teacher_seen))
        count = targets.numel()
        metrics.update(reverse_kl=float((student_chosen - teacher_chosen).sum()), scored=count, tokens_graded=count,
                       agree=int((student_best == teacher_best).sum()), top=count)
    if config.kd_ce_weight and not both:  # over the student's whole head, padding rows included, as its own softmax is
        cross_entropy = linear_cross_entropy(student_hidden, student_head.weight, targets)
        loss = (1 - config.kd_ce_weight) * loss + config.kd_ce_weight * cross_entropy
    return loss, student_hidden.shape[0]
