"""Continuous batching for local transformers models: a KV cache allocated once, refilled as rows finish.

HF `generate` runs a batch until its longest row ends, so a row that stopped early keeps paying for
every step after it, and its cache grows by concatenation, a full copy of the cache each step. Here
a fixed number of rows ("slots") decode together; a row that stops is handed back at once and its
slot takes the next prompt, prefilled apart and copied into the slot. No step computes for a
finished row while prompts wait, and nothing is copied per step.

Layout: per layer, keys and values live in buffers of shape [slots, kv_heads, capacity, head_dim].
Every row's newest token sits at the same column (`width`, the shared write position), so one
forward decodes all rows; rows are left-padded and a [slots, capacity] mask hides each row's unused
columns. A new prompt is written to the columns just left of `width`. When the buffer is full, the
columns no live row uses are dropped from the left; when that frees too little, the buffer grows
(doubling, up to the most a row can need: longest prompt + max_tokens + slack). It starts with room
for INITIAL_NEW_TOKENS generated tokens, so a long `max_tokens` costs memory only when rows use it.

Used for decoder-only models whose cache is plain full attention (a `DynamicLayer` per layer:
Llama, Qwen2/3, Mistral, SmolLM, Phi-3, ...); `supports(model)` says so, and other models go
through HF `generate`. Sampling draws from a generator seeded per request, so a sampled completion
does not depend on which other requests share its batch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from tutorlm.models.tokens import identity_head, plain_output_head

MIN_PREFIX = 8  # shorter shared prefixes are prefilled with each prompt
DRAW_BLOCK = 1024  # tokens per block when a sampled token is drawn (draw)
INITIAL_NEW_TOKENS = 256  # columns for generated tokens that the KV buffer starts with (it grows as rows need)
FEW_ROWS = 64  # on a CPU, a linear layer applied to at most this many rows computes W @ x^T (weight_major_linears)


def supports(model: Any) -> bool:
    """True when every layer of the model's cache is plain full attention (no sliding window, no state)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # noqa: BLE001 - an unusual config: fall back to generate
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class _SlotLayer(DynamicLayer):
    """One layer's keys and values in preallocated buffers; `update` writes at the shared column."""

    def __init__(self, state: "_State") -> None:
        super().__init__()
        self.state = state
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def allocate(self, like: torch.Tensor, rows: int, capacity: int) -> None:
        _, heads, _, dim = like.shape
        self.key_buffer = like.new_zeros(rows, heads, capacity, dim)
        self.value_buffer = like.new_zeros(rows, heads, capacity, dim)
        self.dtype, self.device, self.is_initialized = like.dtype, like.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        start, end = self.state.width, self.state.width + key_states.shape[-2]
        self.key_buffer[:, :, start:end] = key_states
        self.value_buffer[:, :, start:end] = value_states
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.state.width


@dataclass
class _State:
    width: int = 0  # the next column every row writes to


@dataclass(frozen=True)
class RowSettings:
    """One request's own sampling settings (a server's requests differ; `run`'s keyword arguments set them for all)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class _Row:
    index: int  # position of the request in the caller's list
    generator: torch.Generator | None
    started: float
    settings: RowSettings
    tokens: list[int] = field(default_factory=list)
    logprobs: list[tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list)


Finished = Callable[[int, list[int], str, list[tuple[torch.Tensor, torch.Tensor, float]], float], None]
OnToken = Callable[[int, int], bool]  # (request index, token) -> keep going; False ends the row as "cancelled"


def row_settings(count: int, max_tokens: int, temperature: float, top_p: float, seeds: list[int] | None) -> list[RowSettings]:
    """The same sampling settings for `count` prompts, each with its own seed (its index when none are given)."""
    return [RowSettings(max_tokens, temperature, top_p, seeds[i] if seeds else i) for i in range(count)]


def request_seed(seed: int, request: Any) -> int:
    """A sampling seed for one request from its content and sample index, not its place in a batch."""
    text = json.dumps([seed, request.messages, request.sample_index], sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")


def draw(probs: torch.Tensor, generators: list[torch.Generator | None], pad_token_id: int) -> torch.Tensor:
    """One token per row from (rows, V) probabilities, by inverting each row's CDF at a uniform number from the
    row's own generator (a row without one gets `pad_token_id`).

    torch.multinomial draws V exponentials per row. Here each row takes one uniform: the vocabulary is cut into
    blocks of DRAW_BLOCK tokens, the block is found on the cumulative block sums and the token on the cumulative
    sum inside that block, both in float64, so no float32 sum over 150k tokens biases the draw. On this 2-core
    CPU: 1.4 ms against multinomial's 14.9 ms for 8 rows of SmolLM2's 49k vocabulary, 21.5 ms against 245 ms for
    48 rows of Qwen2.5's 152k. A row's draw depends only on its probabilities and its generator, never on the other rows.
    """
    rows, vocabulary = probs.shape
    blocks = torch.nn.functional.pad(probs, (0, -vocabulary % DRAW_BLOCK)).view(rows, -1, DRAW_BLOCK)
    block_cdf = blocks.sum(-1).double().cumsum(-1)  # (rows, blocks): a float32 sum of 1024 values, then float64
    uniforms = torch.tensor([float(torch.rand((), generator=g, dtype=torch.float64, device=g.device)) if g is not None else 0.0
                             for g in generators], dtype=torch.float64, device=probs.device)
    target = (uniforms * block_cdf[:, -1])[:, None]
    block = torch.searchsorted(block_cdf, target, right=True).clamp(max=blocks.shape[1] - 1)  # (rows, 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), torch.zeros_like(target))
    inside = blocks[torch.arange(rows, device=probs.device), block[:, 0]].double().cumsum(-1) + before  # (rows, DRAW_BLOCK)
    offset = torch.searchsorted(inside, target, right=True).clamp(max=DRAW_BLOCK - 1)
    tokens = (block * DRAW_BLOCK + offset)[:, 0].clamp(max=vocabulary - 1)
    possible = probs.gather(1, tokens[:, None])[:, 0] > 0  # rounding at a block's edge: never a zero-probability token
    tokens = torch.where(possible, tokens, probs.argmax(-1))
    missing = torch.tensor([g is None for g in generators], device=probs.device)
    return torch.where(missing, torch.full_like(tokens, pad_token_id), tokens)


def tempered(logits: torch.Tensor, rows: list[Any], sampled: list[bool]) -> torch.Tensor:
    """(rows, V) probabilities at each sampled row's temperature (1 for the others)."""
    temperatures = torch.tensor([row.settings.temperature if hot else 1.0 for row, hot in zip(rows, sampled)],
                                device=logits.device)
    return torch.softmax(logits / temperatures[:, None], dim=-1)


def grad_off(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run an engine method without autograd: in inference mode, or under no_grad when autocast is on around the call
    (sampling inside a bf16 training step, whose loop wraps the round in one autocast context). Inference mode turns
    off autocast's cache of weight casts, so every decoded token would cast every weight to bf16 again; under no_grad
    each weight is cast once for the whole round."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        context = torch.no_grad() if torch.is_autocast_enabled(self.device.type) else torch.inference_mode()
        with context:
            return method(self, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def weight_major_linears(model: Any):
    """While inside, each plain float32 `nn.Linear` of the model applied to at most FEW_ROWS rows computes (W @ x^T)^T
    instead of x @ W^T: the same products, summed in another order, and the result made contiguous as x @ W^T's is. A
    decode step's linear layers stream their weights from memory for a few rows; on a 2-core CPU the weight-major
    product sampled a round of SmolLM2-135M's shape 35% faster at 4 rows, 6-7% at 8 and 16, 0-1% at 1 and 32 (float32;
    greedy SmolLM2 answers unchanged), but 10-15% slower in bf16 (bf16 weights or autocast), so the engine uses it in
    float32 without autocast only. A module whose forward is already replaced (an accelerate hook) is left alone."""
    linears = [module for module in model.modules()
               if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32 and "forward" not in vars(module)]
    for module in linears:
        module.forward = functools.partial(_weight_major_forward, module)
    try:
        yield
    finally:
        for module in linears:
            del module.forward


def _weight_major_forward(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if rows > FEW_ROWS or rows == 0:
        return torch.nn.functional.linear(x, linear.weight, linear.bias)
    out = weight_major(linear.weight, x.reshape(rows, x.shape[-1]), linear.bias)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def weight_major(weight: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """rows @ weight^T (+ bias), (n, in) -> (n, out) contiguous, computed as weight @ rows^T. A float32 single row is
    multiplied as two: BLAS's matrix-vector product ran at less than half the speed of its two-column product here
    (90 of SmolLM2's matrices: 25 ms for one row, 11 ms for the row twice)."""
    n = rows.shape[0]
    if n == 1 and rows.dtype == torch.float32:
        rows = rows.repeat(2, 1)
    out = weight @ rows.T if bias is None else torch.addmm(bias[:, None], weight, rows.T)
    # contiguous, as rows @ W^T's would be: a query left strided sends SDPA to its slow math path
    return out[:, :n].T.contiguous()


def cache_argument(model: Any) -> str:
    """The name of `model.forward`'s key/value cache argument: transformers 5.24 renamed past_key_values to cache
    (the old name warns, and goes in 5.40). A PEFT wrapper's forward takes **kwargs: its base model's decides."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

class Engine:
    """Decode many prompts with `slots` rows at a time, refilling a row the moment it finishes.

    `run(prompts, ...)` takes token-id lists and calls `finished(index, tokens, reason, logprobs,
    latency)` per prompt as soon as it ends, where `tokens` excludes the stop token, `reason` is
    "stop" (a stop token or string) or "length", and `logprobs` holds, per token when asked for,
    (top-k token ids, top-k log-probs, the chosen token's log-prob) from the raw logits.

    A server keeps one `run` going while requests arrive: `settings` gives each prompt its own
    max_tokens / temperature / top_p / seed, `incoming()` is asked before every step for the indices
    of prompts appended to `prompts` (and `settings`) since, `room` bounds the columns a row may
    span (longest allowed prompt + max_tokens), and `on_token(index, token)` sees every generated
    token as it is chosen (streaming); when it returns False the row ends as "cancelled".
    `arrivals_extend`: every arrival starts with one of the first prompts (a row coming back from a tool call), so
    the first prompts' shared prefix is prefilled once for them all.
    """

    def __init__(self, model: Any, *, slots: int, pad_token_id: int, stop_ids: set[int]) -> None:
        self.model, self.slots, self.pad_token_id, self.stop_ids = model, slots, pad_token_id, stop_ids
        self.cache_argument = cache_argument(model)
        self.device = next(model.parameters()).device
        # On a CPU, the vocabulary projection of a few rows is 1.4-3.4x faster as W @ h^T than as h @ W^T
        # (measured for SmolLM2's and Qwen2.5's heads at 1-64 rows): the model returns hidden states, the engine projects.

        self.head = plain_output_head(model) if self.device.type == "cpu" else None
        self.counters = {"prefills": 0, "prefill_tokens": 0, "decode_steps": 0, "row_steps": 0, "compactions": 0, "growths": 0,
                         "kv_bytes_peak": 0}

    @grad_off
    def run(self, prompts: list[list[int]], *, max_tokens: int = 0, temperature: float = 0.0, top_p: float = 1.0,
            top_logprobs: int = 0, seeds: list[int] | None = None, stop_check: Callable[[list[int]], bool] | None = None,
            finished: Finished, settings: list[RowSettings] | None = None, incoming: Callable[[], list[int]] | None = None,
            on_token: OnToken | None = None, room: int | None = None, arrivals_extend: bool = False) -> None:
        if not prompts:
            return
        if settings is None:
            settings = row_settings(len(prompts), max_tokens, temperature, top_p, seeds)
        self.top_logprobs, self.incoming, self.on_token = top_logprobs, incoming, on_token
        self.arrivals_extend = arrivals_extend
        self.stop_check, self.finished = stop_check, finished
        pending = self._setup(prompts, settings, room)
        with contextlib.ExitStack() as stack:
            self._enter(stack)
            self._loop(pending)

    def _setup(self, prompts: list[list[int]], settings: list[RowSettings], room: int | None) -> list[int]:
        """Buffers and rows for a run over `prompts`; returns the order in which they start."""
        self.settings = settings
        # Longest prompts first: the shared column only moves right, so later (shorter) prompts fit left of it.
        pending = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        longest = len(prompts[pending[0]])
        most_new = max(s.max_tokens for s in settings)
        rows = min(self.slots, len(prompts))
        # a live row never spans more columns
        self.most = room if room is not None else longest + most_new + max(32, most_new // 4)
        self.capacity = min(self.most, longest + INITIAL_NEW_TOKENS + max(32, INITIAL_NEW_TOKENS // 4))
        self.state = _State()
        self.layers: list[_SlotLayer] = []
        self.cache = Cache(layers=self.layers)
        self.mask = torch.zeros(rows, self.capacity, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.last = torch.full((rows,), self.pad_token_id, dtype=torch.long, device=self.device)
        self.rows: list[_Row | None] = [None] * rows
        self.prompts = prompts
        return pending

    def _enter(self, stack: contextlib.ExitStack) -> None:
        """Contexts the run needs: on a CPU, the model returns hidden states and the engine projects them, and the
        decode steps' float32 linear layers run weight-major."""
        if self.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
            stack.enter_context(weight_major_linears(self.model))
        if self.head is not None:
            stack.enter_context(identity_head(self.model))

    def _loop(self, pending: list[int]) -> None:
        if self.incoming is None or self.arrivals_extend:
            # a server's arrivals need not share the first prompts' prefix; a tool loop's (tools/loop.py) extend them
            self._prefix(list(self.prompts))
        else:
            self.prefix_tokens, self.prefix = 0, []

        while True:
            if self.incoming is not None:
                pending += self.incoming()
            if not pending and not any(row is not None for row in self.rows):
                break
            free = [slot for slot, row in enumerate(self.rows) if row is None]
            if not free and pending and len(self.rows) < self.slots:
                self._add_rows(min(self.slots - len(self.rows), len(pending)))
                continue
            if free and pending:
                chosen, pending = pending[: len(free)], pending[len(free):]
                self._insert(free[: len(chosen)], chosen)
                continue  # a prompt can end on its first token; look again before decoding
            if free and not pending:
                self._drop_rows()
                if not self.rows:
                    continue  # nothing live: a server's next arrival starts the rows again
            self._decode()

    # -- the three moves ---------------------------------------------------------------------

    def _prefix(self, prompts: list[list[int]]) -> None:
        """Prefill the tokens every prompt starts with (system prompt, instructions) once, not per prompt."""
        shared = os.path.commonprefix(prompts) if len(prompts) > 1 else []
        shared = shared[: min(len(p) for p in prompts) - 1]  # every prompt keeps a token of its own
        self.prefix_tokens, self.prefix = len(shared), []
        if len(shared) < MIN_PREFIX:
            self.prefix_tokens = 0
            return
        cache = DynamicCache()
        self.model(input_ids=torch.tensor([shared], device=self.device), **{self.cache_argument: cache}, use_cache=True, logits_to_keep=1)
        self.prefix = [(layer.keys, layer.values) for layer in cache.layers]

    def _insert(self, slots: list[int], chosen: list[int]) -> None:
        """Prefill `chosen` prompts together and copy their keys/values into `slots`, ending at `width`.

        A row's columns hold the shared prefix, left padding, then the rest of its prompt; the mask
        hides the padding, and positions count only real tokens.
        """
        shared = self.prefix_tokens
        # The same prompt several times (n samples of a question, a GRPO group) is prefilled once and its keys and
        # values copied to each of its slots.
        first: dict[tuple[int, ...], int] = {}
        copy_of = [first.setdefault(tuple(self.prompts[index]), len(first)) for index in chosen]
        unique = list(first)
        suffix = max(len(prompt) - shared for prompt in unique)
        width = shared + suffix
        ids = torch.full((len(unique), suffix), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(unique), width), dtype=torch.long)
        attention[:, :shared] = 1
        for row, prompt in enumerate(unique):
            rest = prompt[shared:]
            ids[row, suffix - len(rest):] = torch.tensor(rest)
            attention[row, width - len(rest):] = 1
        ids, attention = ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        prefill = DynamicCache(ddp_cache_data=[
            (keys.expand(len(unique), -1, -1, -1), values.expand(len(unique), -1, -1, -1)) for keys, values in self.prefix
        ] or None)
        output = self.model(input_ids=ids, attention_mask=attention, position_ids=positions,
                            **{self.cache_argument: prefill}, use_cache=True, logits_to_keep=1)
        self.counters["prefills"] += 1
        self.counters["prefill_tokens"] += int(attention[:, shared:].sum())
        logits = output.logits[:, -1]
        if len(unique) < len(chosen):
            rows = torch.tensor(copy_of, device=self.device)
            for layer in prefill.layers:
                layer.keys, layer.values = layer.keys[rows], layer.values[rows]
            attention, logits = attention[rows], logits[rows]
        if not self.layers:
            for layer in prefill.layers:
                slot_layer = _SlotLayer(self.state)
                slot_layer.allocate(layer.keys, len(self.rows), self.capacity)
                self.layers.append(slot_layer)
            self._count_kv_bytes()
        if width + 1 > self.capacity:  # an arrival longer than the buffer was sized for
            self._grow(min(self.most, max(2 * self.capacity, width + INITIAL_NEW_TOKENS)))
        if self.state.width < width:
            self._shift(width - self.state.width)
        end, index = self.state.width, torch.tensor(slots, device=self.device)
        for slot_layer, layer in zip(self.layers, prefill.layers):
            # under autocast (sampling inside a bf16 training step) a prefill's keys can come back in another dtype
            # than the buffer's (rotary embeddings in fp32); indexed assignment does not cast by itself
            slot_layer.key_buffer[index, :, end - width:end] = layer.keys.to(slot_layer.key_buffer.dtype)
            slot_layer.value_buffer[index, :, end - width:end] = layer.values.to(slot_layer.value_buffer.dtype)
        self.mask[index] = 0
        self.mask[index, end - width:end] = attention
        self.positions[index] = attention.sum(-1)
        now = time.perf_counter()
        for slot, request_index in zip(slots, chosen):
            settings, generator = self.settings[request_index], None
            if settings.temperature > 0:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(settings.seed)
            self.rows[slot] = _Row(request_index, generator, now, settings)
        self._advance(slots, self._logits(logits))

    def _decode(self) -> None:
        """One token for every row."""
        if self.state.width + 1 > self.capacity:
            self._make_room()
        width = self.state.width
        self.mask[:, width] = 1  # free rows attend to their own junk column, so no row is all-masked
        output = self.model(input_ids=self.last[:, None], attention_mask=self.mask[:, : width + 1],
                            position_ids=self.positions[:, None], **{self.cache_argument: self.cache}, use_cache=True,
                            logits_to_keep=1)
        self.state.width += 1
        self.positions += 1
        self.counters["decode_steps"] += 1
        self.counters["row_steps"] += len(self.rows)
        self._advance(list(range(len(self.rows))), self._logits(output.logits[:, -1]))

    def _logits(self, last: torch.Tensor) -> torch.Tensor:
        """(rows, V) logits from the model's output at the last position (hidden states when the engine projects)."""
        return last if self.head is None else weight_major(self.head.weight, last.to(self.head.weight.dtype))

    def _advance(self, slots: list[int], logits: torch.Tensor) -> None:
        """Choose each row's next token from its logits; hand back the rows that are done."""
        logits = logits.float()
        tokens = self._choose(slots, logits)
        top = None
        if self.top_logprobs:
            logprobs = torch.log_softmax(logits, dim=-1)
            top = torch.topk(logprobs, self.top_logprobs, dim=-1)
            chosen_logprobs = logprobs.gather(1, tokens[:, None])[:, 0].tolist()
        self.last[torch.tensor(slots, device=self.device)] = tokens
        for position, (slot, token) in enumerate(zip(slots, tokens.tolist())):
            row = self.rows[slot]
            if row is None:
                continue
            if token in self.stop_ids:
                self._finish(slot, "stop")
                continue
            row.tokens.append(token)
            if top is not None:
                row.logprobs.append((top.indices[position].cpu(), top.values[position].cpu(), chosen_logprobs[position]))
            if self.on_token is not None and not self.on_token(row.index, token):
                self._finish(slot, "cancelled")
            elif self.stop_check is not None and self.stop_check(row.tokens):
                self._finish(slot, "stop")
            elif len(row.tokens) >= row.settings.max_tokens:
                self._finish(slot, "length")

    def _choose(self, slots: list[int], logits: torch.Tensor) -> torch.Tensor:
        rows = [self.rows[slot] for slot in slots]
        sampled = [row is not None and row.settings.temperature > 0 for row in rows]
        if not any(sampled):
            return logits.argmax(dim=-1)
        probs = tempered(logits, rows, sampled)
        top_p = [row.settings.top_p if hot else 1.0 for row, hot in zip(rows, sampled)]
        if min(top_p) < 1.0:  # keep the smallest set of tokens whose mass reaches top_p (a row at 1.0 keeps all)
            limits = torch.tensor([p if p < 1.0 else float("inf") for p in top_p], device=logits.device)
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) >= limits[:, None]] = 0
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        drawn = draw(probs, [row.generator if hot else None for row, hot in zip(rows, sampled)], self.pad_token_id)
        if all(sampled):
            return drawn
        return torch.where(torch.tensor(sampled, device=logits.device), drawn, logits.argmax(dim=-1))

    def _finish(self, slot: int, reason: str) -> None:
        row = self.rows[slot]
        self.rows[slot] = None
        self.finished(row.index, row.tokens, reason, row.logprobs, time.perf_counter() - row.started)

    # -- buffer bookkeeping ------------------------------------------------------------------

    def _columns(self, source: slice, target: slice) -> None:
        for layer in self.layers:
            layer.key_buffer[:, :, target] = layer.key_buffer[:, :, source].clone()
            layer.value_buffer[:, :, target] = layer.value_buffer[:, :, source].clone()
        self.mask[:, target] = self.mask[:, source].clone()

    def _shift(self, by: int) -> None:
        """Move every row right by `by` columns, so a longer prompt fits left of the shared column."""
        width = self.state.width
        if width:
            self._columns(slice(0, width), slice(by, width + by))
        self.mask[:, :by] = 0
        self.state.width += by

    def _make_room(self) -> None:
        """The buffer is full: drop the columns no live row uses, and grow it if that frees under a quarter."""
        self._compact()
        free = self.capacity - self.state.width
        if free < self.capacity // 4 and self.capacity < self.most:
            self._grow(min(self.most, 2 * self.capacity))
        elif free < 1:
            raise RuntimeError("continuous batching: the KV buffer is full (a row outgrew its capacity)")

    def _compact(self) -> None:
        """Drop the leftmost columns that no live row uses."""
        live = [slot for slot, row in enumerate(self.rows) if row is not None]
        used = self.mask[live, : self.state.width]
        first = int(used.argmax(dim=-1).min()) if live else self.state.width
        if first == 0:
            return
        self._columns(slice(first, self.state.width), slice(0, self.state.width - first))
        self.state.width -= first
        self.counters["compactions"] += 1

    def _grow(self, capacity: int) -> None:
        """Reallocate every buffer with `capacity` columns, keeping the columns in use."""
        width = self.state.width
        for layer in self.layers:
            for name in ("key_buffer", "value_buffer"):
                old = getattr(layer, name)
                new = old.new_zeros(*old.shape[:2], capacity, old.shape[3])
                new[:, :, :width] = old[:, :, :width]
                setattr(layer, name, new)
        mask = self.mask.new_zeros(self.mask.shape[0], capacity)
        mask[:, :width] = self.mask[:, :width]
        self.mask, self.capacity = mask, capacity
        self.counters["growths"] += 1
        self._count_kv_bytes()

    def _count_kv_bytes(self) -> None:
        size = sum(buffer.nbytes for layer in self.layers for buffer in (layer.key_buffer, layer.value_buffer))
        self.counters["kv_bytes_peak"] = max(self.counters["kv_bytes_peak"], size)

    def _drop_rows(self) -> None:
        """With no prompt left to start, stop computing for finished rows."""
        keep = [slot for slot, row in enumerate(self.rows) if row is not None]
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        for layer in self.layers:
            layer.key_buffer, layer.value_buffer = layer.key_buffer[index], layer.value_buffer[index]
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        self.rows = [self.rows[slot] for slot in keep]

    def _add_rows(self, count: int) -> None:
        """Arrivals and no free row: decode `count` more rows together (up to `slots`)."""
        for layer in self.layers:
            layer.key_buffer = torch.cat([layer.key_buffer, layer.key_buffer.new_zeros(count, *layer.key_buffer.shape[1:])])
            layer.value_buffer = torch.cat([layer.value_buffer, layer.value_buffer.new_zeros(count, *layer.value_buffer.shape[1:])])
        self.mask = torch.cat([self.mask, self.mask.new_zeros(count, self.mask.shape[1])])
        self.positions = torch.cat([self.positions, self.positions.new_zeros(count)])
        self.last = torch.cat([self.last, self.last.new_full((count,), self.pad_token_id)])
        self.rows += [None] * count
        self._count_kv_bytes()
