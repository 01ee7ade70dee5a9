"""Context windows: the newest messages of a conversation that fit a model's token budget.

Token accounting follows DESIGN.md ("Contract details"): a message costs its stored
`token_count` (content + name + compact-JSON tool calls + 3), the summary and a
state-key system prompt cost the same as a SYSTEM message with that content, and
every window pays 3 tokens of reply priming. `total_tokens` never exceeds
`max_tokens - reserve_tokens` (the budget).

The rules, in the order they are applied:

1. **Input.** `max_tokens < 1`, `reserve_tokens < 0`, or a budget below 3 (the reply
   priming alone; this covers every negative budget) is BAD_USER_INPUT, and so is a
   malformed model name. The encoding is the requested model's (default `gpt-4o` →
   `o200k_base`). A model tiktoken does not know (`claude-3-5-sonnet-latest`, `llama-3`)
   is counted with the nearest bundled encoding (`tokens.model_tokens`: a family map,
   else cl100k_base); the window is then `approximate` and fills at most
   `tokens.APPROXIMATE_BUDGET_SHARE` of the budget, a margin for the model's own
   tokenizer counting more. `total_tokens` is always in `encoding`.
2. **System prompt.** The conversation's first SYSTEM message is its system prompt. A
   `system_prompt` state key holding a non-empty string overrides it (messages are
   immutable; the state key is how a prompt is changed). The first SYSTEM message is
   never an ordinary window message: it is pinned first when `include_system` and no
   state key overrides it, and left out otherwise (other SYSTEM messages are ordinary
   messages). A state-key prompt is not a stored message, so it is not in `messages` and
   `first_seq` / `last_seq` then refer to stored messages only; it is in
   `openai_messages` and in `total_tokens`. A pinned prompt that alone does not fit the
   budget is BAD_USER_INPUT: silently sending a conversation without its instructions
   (persona, guardrails) is worse for an agent than a loud error.
3. **Summary.** With `include_summary`, a `summary` state key `{text, upToSeq}` (a
   non-empty string and an integer >= 0; `up_to_seq` is accepted too, anything else
   is ignored) stands for the messages with seq <= upToSeq: those are never candidates
   (raw messages are never deleted; `include_summary=False` gets them back). The
   pinned system prompt stays pinned even when the summary covers it. The summary is
   sent as a SYSTEM message right after the system prompt and takes priority over
   messages: it is included whenever it fits next to the system prompt, even when the
   newest messages then leave a gap after upToSeq (reported by `truncated`). When it
   does not fit it is left out, `truncated` is True, and the covered messages still
   are not candidates.
4. **Messages.** Candidates (seq > upToSeq, up to the conversation's `last_seq` as
   passed in, the first SYSTEM message excluded) are taken newest first while they fit.
   The window is a contiguous newest suffix of the candidates: once a message does not
   fit, no older message is added even if it is smaller.
5. **Tool calls are never split.** A TOOL message answers the nearest earlier
   ASSISTANT message whose `tool_calls` hold its `tool_call_id`. An assistant message
   and its answers are in the window together or not at all; because the window is a
   suffix, an assistant in it always has all its existing answers, and the window
   starts only at a point where every TOOL message in it has its assistant in it. A
   TOOL message whose assistant is not a candidate (covered by the summary, or
   missing) can therefore never be sent, and the window stops after it.
6. **Report.** `dropped_messages` = the conversation's message_count minus the window's
   messages (the pinned prompt included); `truncated` is True when the budget left out
   a candidate message or the summary. `first_seq` / `last_seq` are the seqs of
   `messages[0]` and `messages[-1]` (the pinned prompt message first).

Cost: one statement for the prelude (state keys + first SYSTEM message), then
newest-first keyset chunks that stop at the first message that does not fit. A chunk
is sized from the room left and the average message size (the conversation's stored
average at first, then what the scan has seen), ~1.25x what should fit, so a window
reads about 1.3x its own rows in one or two round trips; from the third round trip
chunks grow 4x (O(log) round trips whatever the sizes). Stored counts are used when the
encoding is the stored one (`tokens.DEFAULT_ENCODING`); for another encoding only the
messages the scan reaches are counted, through an in-process LRU keyed by (message id,
encoding). Where the first SYSTEM message is (or that there is none up to some seq) is
remembered per conversation in another LRU: messages are append-only, so that never
goes stale, and a conversation without a system prompt is not searched again from
seq 1 (without a partial index on role = 'system' that search walks the history).
Messages come through a `WindowSource`: Postgres now, a Redis hot cache later.
"""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from app import tokens
from app.errors import BadUserInput, NotFound
from app.models import Conversation, Message, Role, StateEntry
from db.repositories import context as repo
from db.repositories.context import Prelude
from db.session import Connection

__all__ = [
    "LRU",
    "ContextWindow",
    "PostgresWindowSource",
    "Prelude",
    "WindowSource",
    "build_window",
    "message_tokens",
    "openai_message",
]

#: Rows per newest-first chunk: estimated from the room left, within these bounds.
MIN_CHUNK = 16
MAX_CHUNK = 4096
#: Read this much more than the estimate says fits, plus a few rows.
CHUNK_SLACK = 1.25
CHUNK_EXTRA = 8
#: From the third round trip on, chunks also grow at least this much each time.
CHUNK_GROWTH = 4

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class WindowSource(Protocol):
    """Where a window's prelude and candidate messages come from.

    Postgres (`PostgresWindowSource`) is the truth; a Redis hot cache holding the
    recent messages of active conversations can implement the same two methods
    (falling back to Postgres for what it does not hold) and be passed to
    `build_window(source=...)`.
    """

    async def prelude(self, *, from_seq: int, up_to_seq: int) -> Prelude:
        """The `system_prompt` / `summary` state entries and the first SYSTEM message with
        from_seq <= seq <= up_to_seq."""
        ...

    async def newest(self, before_seq: int, limit: int, *, after_seq: int = 0) -> list[Message]:
        """Up to `limit` messages with after_seq < seq < before_seq, newest first."""
        ...


class PostgresWindowSource:
    __slots__ = ("conn", "conversation_id", "tenant_id")

    def __init__(self, conn: Connection, tenant_id: str, conversation_id: uuid.UUID) -> None:
        self.conn = conn
        self.tenant_id = tenant_id
        self.conversation_id = conversation_id

    async def prelude(self, *, from_seq: int, up_to_seq: int) -> Prelude:
        return await repo.prelude(
            self.conn, self.tenant_id, self.conversation_id, from_seq=from_seq, up_to_seq=up_to_seq
        )

    async def newest(self, before_seq: int, limit: int, *, after_seq: int = 0) -> list[Message]:
        return await repo.newest(
            self.conn, self.tenant_id, self.conversation_id, after_seq=after_seq, before_seq=before_seq, limit=limit
        )


class LRU(Generic[K, V]):
    """A small in-process LRU (one event loop: no locking needed)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def get_or(self, key: K, compute: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value

    def clear(self) -> None:
        self._data.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)


#: Token counts in encodings other than the stored one. Keys are immutable things: (message id,
#: encoding) — messages never change — or (conversation id, state key, version, encoding).
token_counts: LRU[Hashable, int] = LRU(65_536)

#: (tenant, conversation) → ("found", seq of the first SYSTEM message) or ("none", seq searched
#: through). Append-only messages keep both true; a deleted (purged) prompt is searched past.
system_seqs: LRU[tuple[str, uuid.UUID], tuple[str, int]] = LRU(65_536)


@dataclass(slots=True)
class ContextWindow:
    conversation_id: uuid.UUID
    #: The requested model, or the default.
    model: str
    #: The tiktoken encoding the counts use, e.g. "o200k_base".
    encoding: str
    max_tokens: int
    reserve_tokens: int
    #: Window messages' counts (in `encoding`) + summary and state-key system prompt (as SYSTEM
    #: messages) + 3 of reply priming; never more than max_tokens - reserve_tokens.
    total_tokens: int
    #: Oldest first; a pinned system prompt first when it is a stored message.
    messages: list[Message]
    summary: str | None
    #: conversation.message_count - len(messages).
    dropped_messages: int
    #: The budget left out a candidate message or the summary.
    truncated: bool
    #: Seqs of messages[0] and messages[-1] (the pinned system prompt included); None when empty.
    first_seq: int | None
    last_seq: int | None
    #: [{role, content, name?, tool_calls?, tool_call_id?}]: system prompt, summary, then messages.
    openai_messages: list[dict[str, Any]]
    #: `encoding` is not the model's own (a nearest bundled one): counts are estimates, and the
    #: window kept a safety margin below the budget.
    approximate: bool = False


def message_tokens(message: Message, encoding: str) -> int:
    """A message's tokenCount in `encoding`: the stored one, or counted once per process."""
    if encoding == tokens.DEFAULT_ENCODING:
        return message.token_count
    return token_counts.get_or(
        (message.id, encoding),
        lambda: tokens.count_message(
            message.content, name=message.name, tool_calls=message.tool_calls, encoding=encoding
        ),
    )


def _text_tokens(entry: StateEntry, text: str, encoding: str) -> int:
    return token_counts.get_or(
        (entry.conversation_id, entry.key, entry.version, encoding),
        lambda: tokens.count_message(text, encoding=encoding),
    )


def openai_message(message: Message) -> dict[str, Any]:
    """A chat-completions message. An assistant message with only tool calls sends content null."""
    out: dict[str, Any] = {
        "role": message.role.value,
        "content": None if not message.content and message.tool_calls else message.content,
    }
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = message.tool_calls
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def tool_call_ids(message: Message) -> set[str]:
    calls = message.tool_calls
    if message.role is not Role.ASSISTANT or not isinstance(calls, list):
        return set()
    return {c["id"] for c in calls if isinstance(c, dict) and isinstance(c.get("id"), str)}


def _system_prompt(entry: StateEntry | None) -> str | None:
    if entry is None or not isinstance(entry.value, str) or not entry.value:
        return None
    return entry.value


def _summary(entry: StateEntry | None) -> tuple[str, int] | None:
    value = entry.value if entry is not None else None
    if not isinstance(value, dict):
        return None
    text = value.get("text")
    up_to = value.get("upToSeq", value.get("up_to_seq"))
    if not isinstance(text, str) or not text:
        return None
    if not isinstance(up_to, int) or isinstance(up_to, bool) or up_to < 0:
        return None
    return text, up_to


def _check_budget(max_tokens: int, reserve_tokens: int) -> int:
    if max_tokens < 1:
        raise BadUserInput("maxTokens must be at least 1", field="maxTokens")
    if reserve_tokens < 0:
        raise BadUserInput("reserveTokens must not be negative", field="reserveTokens")
    budget = max_tokens - reserve_tokens
    if budget < tokens.REPLY_PRIMING:
        raise BadUserInput(
            f"maxTokens - reserveTokens is {budget}; a window needs at least {tokens.REPLY_PRIMING} "
            "(the reply priming)",
            field="reserveTokens",
            budget=budget,
        )
    return budget


async def _newest_that_fit(
    source: WindowSource,
    *,
    after_seq: int,
    before_seq: int,
    skip_seq: int | None,
    room: int,
    encoding: str,
    average_tokens: float,
) -> tuple[list[Message], int, bool]:
    """The longest newest suffix of the candidates that fits `room` and splits no tool call.

    Returns (messages oldest first, their tokens, whether a candidate was left out).
    Reads newest-first chunks and stops at the first message that does not fit.
    """
    taken: list[Message] = []  # newest first; may run past the last valid cut
    cost = 0
    cut = cut_cost = 0  # taken[:cut] is the best window so far
    open_calls: set[str] = set()  # tool_call_ids of taken TOOL messages whose assistant is not taken yet
    limit = rounds = 0
    more = before_seq - after_seq > 1
    while more:
        if taken:
            average_tokens = cost / len(taken)
        estimate = math.ceil((room - cost) / max(average_tokens, 1.0) * CHUNK_SLACK) + CHUNK_EXTRA
        if rounds >= 2:
            estimate = max(estimate, limit * CHUNK_GROWTH)
        limit = min(MAX_CHUNK, max(MIN_CHUNK, estimate))
        rounds += 1
        chunk = await source.newest(before_seq, limit, after_seq=after_seq)
        more = len(chunk) == limit
        for message in chunk:
            before_seq = message.seq
            if message.seq == skip_seq:
                continue
            size = message_tokens(message, encoding)
            if cost + size > room:
                return taken[:cut][::-1], cut_cost, True
            cost += size
            taken.append(message)
            if message.role is Role.TOOL:
                open_calls.add(message.tool_call_id or "")
            elif open_calls and message.role is Role.ASSISTANT:
                open_calls -= tool_call_ids(message)
            if not open_calls:
                cut, cut_cost = len(taken), cost
        more = more and before_seq - after_seq > 1
    return taken[:cut][::-1], cut_cost, cut < len(taken)


async def _prelude(source: WindowSource, tenant_id: str, conversation: Conversation) -> Prelude:
    """The prelude, searching for the first SYSTEM message only where it can still be."""
    key = (tenant_id, conversation.id)
    known = system_seqs.get(key)
    last_seq = conversation.last_seq
    if known is None:
        from_seq = 1
    elif known[0] == "found":
        from_seq = known[1]  # the range starts at it: found in the first stretch, O(1)
    else:
        from_seq = known[1] + 1  # only the messages appended since the last search
    prelude = await source.prelude(from_seq=from_seq, up_to_seq=last_seq)
    if prelude.first_system is not None:
        system_seqs.put(key, ("found", prelude.first_system.seq))
    elif known is None or known[0] == "none" or known[1] <= last_seq:
        # Nothing up to last_seq (a remembered prompt at or below it has been purged).
        system_seqs.put(key, ("none", max(last_seq, known[1] if known and known[0] == "none" else 0)))
    return prelude


async def build_window(
    conn: Connection,
    tenant_id: str,
    conversation: Conversation,
    *,
    max_tokens: int,
    model: str | None = None,
    reserve_tokens: int = 0,
    include_system: bool = True,
    include_summary: bool = True,
    default_model: str = "gpt-4o",
    source: WindowSource | None = None,
) -> ContextWindow:
    """The context window of `conversation` for the next LLM call (rules in the module docstring).

    Reads only the prelude and O(window) newest messages, up to `conversation.last_seq`
    (the snapshot the caller holds; later appends are not seen). `source` replaces the
    Postgres reads (a hot cache); `conn` is then unused.

    Raises BadUserInput for a bad budget, an unknown model, or a pinned system prompt that
    alone exceeds the budget; NotFound when the conversation is not the tenant's.
    """
    budget = _check_budget(max_tokens, reserve_tokens)
    model = model if model is not None else default_model
    counting = tokens.model_tokens(model)
    encoding = counting.encoding
    if counting.approximate:
        budget = tokens.approximate_budget(budget)
    if conversation.tenant_id != tenant_id:
        raise NotFound("conversation not found", conversationId=str(conversation.id))
    if source is None:
        source = PostgresWindowSource(conn, tenant_id, conversation.id)
    prelude = await _prelude(source, tenant_id, conversation)
    used = tokens.REPLY_PRIMING
    truncated = False

    # The system prompt: a state key overrides the first SYSTEM message, which is never an ordinary message.
    first_system = prelude.first_system
    pinned_message: Message | None = None
    pinned_text: str | None = None
    if include_system:
        pinned_text = _system_prompt(prelude.system_prompt)
        if pinned_text is not None:
            assert prelude.system_prompt is not None
            cost = _text_tokens(prelude.system_prompt, pinned_text, encoding)
        elif first_system is not None:
            pinned_message = first_system
            cost = message_tokens(first_system, encoding)
        else:
            cost = 0
        if used + cost > budget:
            raise BadUserInput(
                f"the system prompt alone needs {cost} tokens (+{tokens.REPLY_PRIMING} reply priming); "
                f"maxTokens - reserveTokens is {budget}",
                field="maxTokens",
                systemPromptTokens=cost,
                budget=budget,
            )
        used += cost

    # The summary stands for seq <= upToSeq; it goes in when it fits next to the system prompt.
    after_seq = 0
    summary: str | None = None
    parsed = _summary(prelude.summary) if include_summary else None
    if parsed is not None:
        assert prelude.summary is not None
        text, up_to_seq = parsed
        after_seq = min(up_to_seq, conversation.last_seq)
        cost = _text_tokens(prelude.summary, text, encoding)
        if used + cost <= budget:
            summary = text
            used += cost
        else:
            truncated = True

    window, window_tokens, left_out = await _newest_that_fit(
        source,
        after_seq=after_seq,
        before_seq=conversation.last_seq + 1,
        skip_seq=first_system.seq if first_system is not None else None,
        room=budget - used,
        encoding=encoding,
        average_tokens=conversation.token_count / max(conversation.message_count, 1),
    )
    messages = [pinned_message, *window] if pinned_message is not None else window
    openai: list[dict[str, Any]] = []
    if pinned_message is not None:
        openai.append(openai_message(pinned_message))
    elif pinned_text is not None:
        openai.append({"role": Role.SYSTEM.value, "content": pinned_text})
    if summary is not None:
        openai.append({"role": Role.SYSTEM.value, "content": summary})
    openai.extend(openai_message(m) for m in window)
    return ContextWindow(
        conversation_id=conversation.id,
        model=model,
        encoding=encoding,
        max_tokens=max_tokens,
        reserve_tokens=reserve_tokens,
        total_tokens=used + window_tokens,
        messages=messages,
        summary=summary,
        dropped_messages=conversation.message_count - len(messages),
        truncated=truncated or left_out,
        first_seq=messages[0].seq if messages else None,
        last_seq=messages[-1].seq if messages else None,
        openai_messages=openai,
        approximate=counting.approximate,
    )
