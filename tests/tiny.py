"""What the tests share: a tiny causal LM and a byte-level BPE tokenizer with a chat template, built in-process (no
network), a second tokenizer, a varied model for the engine, a prepared run, and a hand-made trace."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch
from rich.console import Console

from tutorlm.config import GenerateConfig, Recipe, RunConfig, TaskConfig, TrainConfig
from tutorlm.curate import curate
from tutorlm.generate import generate
from tutorlm.train.data import preflight

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Take the last letter of each word and concatenate them. The answer is abc.",
    "A coin is heads up. Alice flips the coin. Is the coin still heads up? The answer is No.",
    "What is 12 + 30? Add column by column. 2 + 0 = 2, 1 + 3 = 4. The answer is 42.",
    "Think step by step, then finish with the line The answer is X.",
] * 20


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<|pad|>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def make_model(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def save_tiny_model(path: Path, seed: int = 0, tokenizer=None) -> Path:
    """A tiny model and tokenizer (this module's, or the one given) saved with save_pretrained, loadable as any
    local model directory."""
    tokenizer = tokenizer if tokenizer is not None else make_tokenizer()
    model = make_model(tokenizer, seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


QUIET = Console(file=open(os.devnull, "w"))


def make_run(tmp_path: Path, **train_options) -> Recipe:
    recipe = Recipe(
        run=RunConfig(name="run", output_dir=str(tmp_path)), task=TaskConfig(source="coin_flip"),
        generate=GenerateConfig(limit=40, cache=False),
        train=TrainConfig(**{"batch_size": 4, "lr": 3e-3, "eval_every": 5, "save_every": 5, "eval_fraction": 0.2, **train_options}),
    )
    generate(recipe, console=QUIET)
    curate(recipe, console=QUIET)
    return recipe


def prepared(objective_class, recipe: Recipe, tokenizer, student) -> tuple:
    """(an objective of the class, prepared on the run's curated rows, and the examples it prepared)."""
    from tutorlm.run import read_jsonl

    rows = read_jsonl(recipe.run.path / "curated.jsonl")
    examples, _ = preflight(tokenizer, rows, 256, "truncate")
    objective = objective_class(recipe)
    objective.prepare(recipe, student, tokenizer, rows, examples, "cpu", QUIET)
    return objective, examples


def different_tokenizer(upper: bool = True, vocab_size: int = 330):
    """A second byte-level BPE: trained on the upper-cased corpus (few shared merges) or on the same one with a
    smaller vocabulary (most words cut differently, digits, spaces and punctuation alike)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([text.upper() if upper else text for text in CORPUS], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_end|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                      bos_token="<|im_start|>")
    wrapped.chat_template = make_tokenizer().chat_template
    return wrapped


def varied_model(tokenizer):
    """A tiny Llama with large random weights, so its greedy continuations vary instead of repeating."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


def prompts_with_shared_prefix(vocab: int, count: int = 23, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    shared = [rng.randrange(3, vocab) for _ in range(12)]
    return [shared + [rng.randrange(3, vocab) for _ in range(rng.randint(1, 30))] for _ in range(count)]


def generate_one(model, prompt: list[int], stop_ids: set[int], max_tokens: int) -> tuple[list[int], str]:
    """Unbatched, unpadded HF greedy generation: the reference."""
    output = model.generate(torch.tensor([prompt], device=model.device),
                            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=model.device),
                            max_new_tokens=max_tokens, do_sample=False, eos_token_id=sorted(stop_ids), pad_token_id=0)
    tokens = output[0, len(prompt):].tolist()
    for position, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:position], "stop"
    return tokens, "length"


def trace(example_id: str, answer: str, text: str, *, sample: int = 0, tokens: int | None = None, finish: str = "stop") -> dict:
    return {
        "id": f"{example_id}#{sample}", "example_id": example_id, "sample_index": sample, "question": f"q {example_id}",
        "answer": answer, "choices": None, "prompt": [{"role": "user", "content": f"q {example_id}"}],
        "completion": [{"role": "assistant", "content": text}], "finish_reason": finish,
        "usage": {"prompt_tokens": 5, "completion_tokens": tokens if tokens is not None else len(text.split())},
        "backend": "openai", "model": "m",
    }


def prompt_ids(tokenizer, question: str) -> list[int]:
    """A question's chat prompt, as the engine and the server read it."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def scripted_model(tokenizer, scripts: dict[str, str] | list[tuple[list[int], str]]):
    """A tiny Llama trained (a few seconds) until greedy decoding answers each question of `scripts` with its text
    (questions as text, asked in the chat template, or as prompt ids)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    pairs = [(prompt_ids(tokenizer, q), a) for q, a in scripts.items()] if isinstance(scripts, dict) else scripts
    sequences = [list(prompt) + tokenizer(a + "<|im_end|>", add_special_tokens=False)["input_ids"] for prompt, a in pairs]
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
    labels = torch.full((len(sequences), width), -100)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = labels[row, : len(sequence)] = torch.tensor(sequence)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
