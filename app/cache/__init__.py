"""The Redis hot cache: write-through after commit, and never a state Postgres does not have.

What is cached, per conversation: its header (the `conversations` row), its last
`CACHE_RECENT_MESSAGES` messages (a gap-free suffix: seqs s-n+1..s, with token counts and
sources), all its state keys, and its first SYSTEM message (for context windows); per tenant, the
sessionId → conversation mapping. Reads of the recent history, the header, state and context
windows are served from here when hot and filled from Postgres on a miss.

Keys. Redis Cluster needs every key one script touches in one slot, so a conversation's keys
share the hash tag `{<tenant_id>:<conversation_id>}` (tenant ids never contain braces):

    cs:{<tenant>:<conversation>}:hdr    HASH   v  version: +1 on every change, the fence fills check
                                               b  boot id of the Redis server that wrote the entry
                                               c  the header (JSON)          s  its last_seq
                                               n  messages in :msgs          z  their bytes
                                               q  the sessionId              a  "1" while ACTIVE
                                               y  first SYSTEM message (JSON), "" = none in 1..s
    cs:{<tenant>:<conversation>}:msgs   LIST   the last n messages, oldest first (JSON arrays):
                                               at most CACHE_RECENT_MESSAGES and MAX_ENTRY_BYTES
    cs:{<tenant>:<conversation>}:state  HASH   "\\0" → "1" (loaded; Postgres text never holds NUL)
                                               key → "<version>:<updated_at µs>:<entry JSON>"
    cs:{<tenant>}:sess:<sha256(sessionId)[:32]>   STRING  conversation id (immutable; every read
                                               checks it against the header's `q`)

An entry is valid when `c` is present and `b` is the boot id of the server answering: all three
keys are then consistent (each script below runs atomically). A *tombstone* is a header holding
only `v` and `b`: it keeps the version counter alive for a minute after an invalidation.

Never wrong (docs/decisions.md, "Hot cache" has the full argument):

- The cache is a Database listener: it hears each committed unit of work's events, in order,
  after commit. Nothing in the services or inside a transaction talks to Redis.
- Every event is applied by a Lua script only when it provably follows what is cached, otherwise
  the script drops the entry and bumps `v` (an invalidation): an append only when the cached tail
  is seq-1; a state write only when the cached key is the previous version and older; creating a
  conversation only when nothing is cached for it. Closes, other header changes, new state keys
  and deletes always invalidate (their order is not provable from what Postgres returns).
- A fill reads `v` (and Redis' clock) before reading Postgres and writes only if `v` is unchanged
  and the read is under FILL_DEADLINE_S old: any event committed meanwhile has bumped `v`, so a
  fill never overwrites newer data; a fill slower than the deadline is dropped (tombstones outlive
  it, so an expired tombstone cannot let an old fill in).
- A Redis write that fails after commit marks the conversation dirty in this process: its reads
  go to Postgres and a background task retries the invalidation until Redis acknowledges it.
  While Redis is unreachable (a failure opens a breaker for CACHE_RETRY_S) every read and write
  goes to Postgres only.
- A restarted Redis (which may come back from its append-only file with entries older than
  writes that failed, or without writes it had acknowledged) has a new `run_id`: entries carry the
  boot id they were written under, so everything from before the restart reads as a miss.
- Entries of ACTIVE conversations live CACHE_TTL_S after their last write or fill (reads do not
  extend them: a stale entry cannot be kept alive by readers); others CACHE_CLOSED_GRACE_S.

Modules. `keys` (key layout, constants), `options` (CacheOptions), `codec` (messages, headers and
state entries as bytes), `scripts` (the Lua scripts of lua/*.lua, pipelined EVALSHA, `evict`),
`snapshot` (what one read brought back), `client` (HotCache: lifecycle) built from `base` (state,
connection, breaker), `reads`, `fill` and `writes`, and `window_source` (CachedWindowSource).
"""
