"""Continuous batching against HF generate on tiny models built in-process."""

from __future__ import annotations

import random

import pytest
import torch

from tiny import generate_one, make_model, make_tokenizer, prompts_with_shared_prefix, varied_model
from tutorlm.backends import Request, Sampling
from tutorlm.models.engine import Engine, supports


@pytest.fixture(scope="module")
def tiny():
    tokenizer = make_tokenizer()
    return tokenizer, varied_model(tokenizer)


def run_engine(model, prompts, slots, stop_ids, **options):
    results = {}
    engine = Engine(model, slots=slots, pad_token_id=0, stop_ids=stop_ids)
    engine.run(prompts, finished=lambda index, tokens, reason, logprobs, latency: results.__setitem__(index, (tokens, reason, logprobs)),
               **options)
    return results, engine


@pytest.mark.parametrize("slots", [1, 3, 8, 64])
def test_greedy_matches_unbatched_generate(tiny, slots):
    tokenizer, model = tiny
    prompts = prompts_with_shared_prefix(len(tokenizer))
    stop_ids = set(range(0, len(tokenizer), 11))  # rows stop at different lengths
    expected = [generate_one(model, prompt, stop_ids, 20) for prompt in prompts]
    assert {len(tokens) for tokens, _ in expected} >= {0, 20} and len({len(t) for t, _ in expected}) > 3
    results, engine = run_engine(model, prompts, slots, stop_ids, max_tokens=20)
    assert [results[i][:2] for i in range(len(prompts))] == expected
    assert engine.prefix_tokens == 12
    # Each prompt is prefilled once, and the shared prefix is not prefilled per prompt.
    assert engine.counters["prefill_tokens"] == sum(len(p) - 12 for p in prompts)
    # No step computes for a finished row while prompts wait: row-steps equal the tokens that needed a forward.
    assert engine.counters["row_steps"] == sum(len(tokens) if reason == "stop" else len(tokens) - 1 for tokens, reason in expected)
    if slots == 1:
        assert engine.counters["compactions"] > 0  # the buffer wrapped around many times


@pytest.mark.parametrize("slots", [1, 4, 64])
def test_kv_buffer_grows_only_as_rows_need(tiny, slots, monkeypatch):
    from tutorlm.models import engine as batching

    tokenizer, model = tiny
    prompts = prompts_with_shared_prefix(len(tokenizer))
    stop_ids = set(range(0, len(tokenizer), 11))
    expected = [generate_one(model, prompt, stop_ids, 40) for prompt in prompts]
    monkeypatch.setattr(batching, "INITIAL_NEW_TOKENS", 2)  # room for 2 generated tokens (+32 slack) at first
    results, engine = run_engine(model, prompts, slots, stop_ids, max_tokens=40)
    assert [results[i][:2] for i in range(len(prompts))] == expected
    if slots >= len(prompts):  # every row starts at once, so no column frees up: the buffer must grow
        assert engine.counters["growths"] > 0 and engine.counters["compactions"] == 0
    else:  # rows refill as others finish: dropping unused columns makes room
        assert engine.counters["compactions"] > 0
    assert engine.capacity <= engine.most


def test_a_long_max_tokens_costs_no_memory_until_used(tiny):
    tokenizer, model = tiny
    prompts = prompts_with_shared_prefix(len(tokenizer), count=8)
    expected = [generate_one(model, prompt, set(), 6)[0] for prompt in prompts]
    results, engine = run_engine(model, prompts, 8, set(), max_tokens=1_000_000, stop_check=lambda tokens: len(tokens) >= 6)
    assert [results[i][0] for i in range(len(prompts))] == expected
    longest = max(len(p) for p in prompts)
    assert engine.capacity == longest + 256 + 64 and engine.counters["growths"] == 0  # not longest + 1,000,000 + slack
    assert engine.layers[0].key_buffer.shape[2] == engine.capacity
    assert engine.counters["kv_bytes_peak"] == sum(layer.key_buffer.nbytes + layer.value_buffer.nbytes for layer in engine.layers)


def test_a_prompt_asked_several_times_is_prefilled_once(tiny):
    """n samples of a question and a GRPO group put one prompt in several slots: its prefill is computed once and
    copied, and every copy samples as it would alone."""
    tokenizer, model = tiny
    distinct = prompts_with_shared_prefix(len(tokenizer), count=3, seed=2)
    prompts = [distinct[i] for i in (0, 1, 0, 2, 0, 1)]
    seeds = [50 + i for i in range(len(prompts))]
    together, engine = run_engine(model, prompts, 6, {3, 4, 5, 6, 7}, max_tokens=12, temperature=1.0, seeds=seeds)
    assert engine.counters["prefill_tokens"] == sum(len(p) - 12 for p in distinct)  # not once per slot
    for index, (prompt, seed) in enumerate(zip(prompts, seeds)):
        alone = run_engine(model, [prompt], 1, {3, 4, 5, 6, 7}, max_tokens=12, temperature=1.0, seeds=[seed])[0][0]
        assert together[index][:2] == alone[:2]
    assert len({tuple(together[i][0]) for i in (0, 2, 4)}) > 1  # the copies are sampled apart
    greedy = run_engine(model, prompts, 4, set(), max_tokens=8)[0]
    assert [greedy[i][0] for i in range(len(prompts))] == [generate_one(model, p, set(), 8)[0] for p in prompts]


def test_sampling_does_not_depend_on_batch_composition(tiny):
    tokenizer, model = tiny
    prompts = prompts_with_shared_prefix(len(tokenizer), seed=1)
    seeds = [1000 + i for i in range(len(prompts))]
    runs = [run_engine(model, prompts, slots, {3, 4, 5, 6, 7}, max_tokens=16, temperature=1.0, top_p=0.9,
                       seeds=seeds, top_logprobs=3)[0] for slots in (1, 5, 32)]
    assert runs[0].keys() == runs[1].keys() == runs[2].keys()
    for index in runs[0]:
        first = runs[0][index]
        for other in runs[1:]:
            assert other[index][0] == first[0]
            assert [step[2] for step in other[index][2]] == pytest.approx([step[2] for step in first[2]], abs=1e-4)
    # Different seeds give different samples; top-k log-probs are sorted and contain the best token.
    reseeded = run_engine(model, prompts, 8, {3, 4, 5, 6, 7}, max_tokens=16, temperature=1.0, seeds=[7 + s for s in seeds])[0]
    assert any(reseeded[i][0] != runs[0][i][0] for i in runs[0])
    for tokens, _, logprobs in runs[0].values():
        assert len(logprobs) == len(tokens)
        for top_ids, top_values, chosen in logprobs:
            assert top_values.tolist() == sorted(top_values.tolist(), reverse=True) and chosen <= float(top_values[0]) + 1e-6


def test_top_p_keeps_only_the_nucleus(tiny):
    tokenizer, model = tiny
    prompts = prompts_with_shared_prefix(len(tokenizer), count=6, seed=2)
    greedy = run_engine(model, prompts, 4, set(), max_tokens=8)[0]
    # A tiny nucleus leaves only the most likely token: sampling then equals greedy decoding.
    narrow = run_engine(model, prompts, 4, set(), max_tokens=8, temperature=1.0, top_p=1e-6, seeds=list(range(6)))[0]
    assert {i: r[0] for i, r in narrow.items()} == {i: r[0] for i, r in greedy.items()}


def test_stop_check_ends_a_row(tiny):
    tokenizer, model = tiny
    prompts = prompts_with_shared_prefix(len(tokenizer), count=5, seed=3)
    results = run_engine(model, prompts, 2, set(), max_tokens=12, stop_check=lambda tokens: len(tokens) == 4)[0]
    assert all(len(tokens) == 4 and reason == "stop" for tokens, reason, _ in results.values())


def test_sliding_window_models_fall_back_to_generate(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    from tutorlm.backends.hf import HFBackend
    from tutorlm.config import TeacherConfig

    tokenizer = make_tokenizer()
    model = MistralForCausalLM(MistralConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )).eval()
    assert not supports(model) and supports(make_model(tokenizer))
    backend = HFBackend(TeacherConfig(backend="hf", model="tiny-mistral", batch_size=2), model=model, tokenizer=tokenizer)
    results = []
    requests = [Request([{"role": "user", "content": f"What is {i} + {i}?"}]) for i in range(3)]
    backend.run(requests, Sampling(max_tokens=5), lambda request, completion: results.append(completion))
    assert len(results) == 3 and all(0 <= c.completion_tokens <= 5 for c in results)
    assert backend.counters["batches"] == 2  # HF generate: two batches of at most two prompts


def test_hf_backend_stop_strings_and_sampled_reproducibility(tiny):
    from tutorlm.backends.hf import HFBackend
    from tutorlm.config import TeacherConfig

    tokenizer, model = tiny
    requests = [Request([{"role": "user", "content": f"A coin is heads up. Question {i}."}], sample_index=s) for i in range(4) for s in range(2)]

    def run(batch_size, sampling):
        backend = HFBackend(TeacherConfig(backend="hf", model="tiny", batch_size=batch_size), model=model, tokenizer=tokenizer)
        out = {}
        backend.run(requests, sampling, lambda request, completion: out.__setitem__((request.messages[0]["content"], request.sample_index), completion))
        return out

    sampled = Sampling(temperature=1.0, max_tokens=10, seed=5)
    one, many = run(1, sampled), run(8, sampled)
    assert {k: c.text for k, c in one.items()} == {k: c.text for k, c in many.items()}
    assert len({c.text for c in one.values()}) > 1  # samples differ across requests and sample indices
    free = run(3, Sampling(max_tokens=10))
    word = next(c.text for c in free.values() if len(c.text) > 3)[1:3]
    stopped = run(3, Sampling(max_tokens=10, stop=(word,)))
    for key, completion in stopped.items():
        if word in free[key].text:
            assert completion.text == free[key].text[: free[key].text.index(word)] and completion.finish_reason == "stop"


def test_draw_follows_the_probabilities_and_never_picks_an_impossible_token():
    from tutorlm.models.engine import draw

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    generators = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    counts = torch.zeros(5)
    for _ in range(4000):
        tokens = draw(probs, generators, pad_token_id=-1)
        counts[tokens[0]] += 1
        assert tokens[1] == 4
    frequencies = counts / counts.sum()
    assert counts[1] == 0 and counts[4] == 0
    assert torch.allclose(frequencies, probs[0], atol=0.03)  # 4000 draws: standard error under 0.008

    # across the blocks the vocabulary is cut into, and in the last, partial one
    wide = torch.zeros(1, 2500)
    wide[0, [1023, 1024, 2499]] = torch.tensor([0.25, 0.25, 0.5])
    generator = torch.Generator().manual_seed(3)
    drawn = torch.tensor([int(draw(wide, [generator], pad_token_id=-1)) for _ in range(2000)])
    assert set(drawn.tolist()) == {1023, 1024, 2499}
    assert abs(float((drawn == 2499).float().mean()) - 0.5) < 0.05


def test_draw_of_a_row_depends_only_on_its_generator_and_a_free_row_gets_the_pad():
    from tutorlm.models.engine import draw

    probs = torch.softmax(torch.randn(3, 1000, generator=torch.Generator().manual_seed(2)), -1)
    alone = draw(probs[:1], [torch.Generator().manual_seed(7)], pad_token_id=0)
    together = draw(probs, [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8), None], pad_token_id=-5)
    assert together[0] == alone[0] and together[2] == -5


def test_arrivals_while_running_match_unbatched_generate(tiny):
    """A server's requests arrive while others decode: each still gets exactly what it would get alone,
    including an arrival longer than any prompt the buffer was sized for, and more rows than the run began with."""
    from tutorlm.models.engine import RowSettings

    tokenizer, model = tiny
    rng = random.Random(3)
    vocab = len(tokenizer)
    first = [[rng.randrange(3, vocab) for _ in range(rng.randint(2, 6))] for _ in range(2)]
    later = [[rng.randrange(3, vocab) for _ in range(n)] for n in (40, 3, 9, 350, 5)]
    stop_ids = {1}
    limits = [12, 30, 7, 25, 16, 4, 20]
    prompts = list(first)
    settings = [RowSettings(max_tokens=limits[i]) for i in range(len(first))]
    steps = {"calls": 0}

    def incoming():
        steps["calls"] += 1
        if steps["calls"] in (3, 4, 9, 15, 22) and later:
            prompts.append(later.pop(0))
            settings.append(RowSettings(max_tokens=limits[len(prompts) - 1]))
            return [len(prompts) - 1]
        return []

    results = {}
    engine = Engine(model, slots=4, pad_token_id=0, stop_ids=stop_ids)
    engine.run(prompts, settings=settings, incoming=incoming, room=420,
               finished=lambda index, tokens, reason, logprobs, latency: results.__setitem__(index, (tokens, reason)))
    assert len(prompts) == 7 and sorted(results) == list(range(7))
    for index, prompt in enumerate(prompts):
        assert results[index] == generate_one(model, prompt, stop_ids, limits[index]), index
    assert engine.counters["growths"] > 0  # the 350-token arrival did not fit the first buffer


def test_rows_keep_their_own_sampling_settings(tiny):
    """Greedy and sampled requests share a batch: a greedy row is what generate gives, and a sampled row is
    what it is when it runs alone with the same seed and temperature."""
    from tutorlm.models.engine import RowSettings

    tokenizer, model = tiny
    prompts = prompts_with_shared_prefix(len(tokenizer), count=6, seed=5)
    settings = [RowSettings(15, 0.0), RowSettings(15, 1.0, 1.0, 7), RowSettings(15, 0.7, 0.5, 8),
                RowSettings(15, 0.0), RowSettings(15, 1.3, 0.9, 9), RowSettings(15, 1.0, 1.0, 10)]
    together, _ = run_engine(model, prompts, 6, {1}, settings=settings)
    for index, prompt in enumerate(prompts):
        alone, _ = run_engine(model, [prompt], 1, {1}, settings=[settings[index]])
        assert together[index][:2] == alone[0][:2], index
        if settings[index].temperature == 0:
            assert together[index][:2] == generate_one(model, prompt, {1}, 15)
    sampled = [together[i][0] for i in (1, 5)]
    greedy = generate_one(model, prompts[1], {1}, 15)[0]
    assert sampled[0] != greedy  # temperature 1 over random weights: the sampled row did sample


def test_on_token_streams_every_token_and_cancels(tiny):
    tokenizer, model = tiny
    prompts = prompts_with_shared_prefix(len(tokenizer), count=5, seed=6)
    seen: dict[int, list[int]] = {}

    def on_token(index, token):
        seen.setdefault(index, []).append(token)
        return not (index == 2 and len(seen[index]) == 3)  # the client of request 2 goes away after 3 tokens

    results, _ = run_engine(model, prompts, 3, {1}, max_tokens=10, on_token=on_token)
    for index in range(5):
        tokens, reason, _ = results[index]
        assert seen.get(index, []) == tokens
        if index == 2:
            assert (len(tokens), reason) == (3, "cancelled")
        else:
            assert (tokens, reason) == generate_one(model, prompts[index], {1}, 10)


def test_the_engine_decodes_under_bf16_autocast():
    """GRPO and on-policy training sample inside a bf16 training step: a prefill's keys may come back in another
    dtype than the KV buffer's, and the engine must still decode (it failed with 'Index put requires the source and
    destination dtypes match')."""
    import torch

    from tutorlm.models.engine import Engine

    tokenizer = make_tokenizer()
    model = make_model(tokenizer).eval()
    shared = tokenizer("Think step by step, then finish with the line The answer is X.")["input_ids"]
    prompts = [shared + tokenizer(text)["input_ids"] for text in (" What is 12 + 30?", " A coin is heads up.", " Hi")]
    done = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        Engine(model, slots=2, pad_token_id=tokenizer.pad_token_id, stop_ids={tokenizer.eos_token_id}).run(
            prompts, max_tokens=6, temperature=1.0, seeds=[1, 2, 3],
            finished=lambda index, tokens, reason, logprobs, latency: done.__setitem__(index, tokens))
    assert sorted(done) == [0, 1, 2] and all(len(tokens) <= 6 for tokens in done.values())


def test_weight_major_linears_give_the_plain_values_and_restore_the_layers():
    from tutorlm.models.engine import FEW_ROWS, weight_major_linears

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.Linear(24, 8, bias=False),
                                torch.nn.Linear(8, 8).to(torch.bfloat16))
    hook = model[1].forward = lambda x: torch.nn.functional.linear(x, model[1].weight)  # as an accelerate hook does
    few, one, many = torch.randn(2, 3, 16), torch.randn(1, 1, 16), torch.randn(FEW_ROWS + 1, 16)
    expected = [model[0](x) for x in (few, one, many)]
    with weight_major_linears(model):
        assert "forward" in vars(model[0]) and vars(model[1])["forward"] is hook  # a hooked layer is left alone
        assert "forward" not in vars(model[2])  # so are bf16 layers
        for x, plain in zip((few, one, many), expected):  # one row is multiplied as two, and the copy dropped
            out = model[0](x)
            assert out.shape == plain.shape and torch.allclose(out, plain, atol=1e-6)
            assert out.is_contiguous()  # a strided query would send SDPA to its slow math path
    assert "forward" not in vars(model[0]) and vars(model[1])["forward"] is hook
    assert torch.equal(model[0](few), expected[0])
