
local h = redis.call('HMGET', KEYS[1], 'v', 'b', 'c', 's', 'n', 'y', 'q')
if not h[3] or h[2] ~= ARGV[1] then return {0, tonumber(h[1]) or 0, now_ms()} end
if ARGV[2] ~= '' and h[7] ~= ARGV[2] then return {3} end
local st = redis.call('HMGET', KEYS[3], LOADED, 'system_prompt', 'summary')
local n = tonumber(h[5])
local m = math.min(tonumber(ARGV[3]), n)
local items = {}
if m > 0 then items = redis.call('LRANGE', KEYS[2], -m, -1) end
if not st[1] or #items ~= m then return {0, tonumber(h[1]) or 0, now_ms()} end
return {1, h[3], tonumber(h[4]), n, h[6], st[2], st[3], items}
