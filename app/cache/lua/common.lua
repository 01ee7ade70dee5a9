
local LOADED = '\0'
-- Redis Cluster: the client sends '*' for the boot id and the node answering fences with its own
-- run_id (app/cache/base.py, _on_cluster_connect), so a promoted replica never serves what it
-- replicated from the old master.
if ARGV[1] == '*' then ARGV[1] = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function tombstone(v, boot, ttl)
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'v', v + 1, 'b', boot)
  redis.call('PEXPIRE', KEYS[1], ttl)
end
local function expire_all(ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
