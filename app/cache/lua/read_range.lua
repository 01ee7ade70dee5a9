
local h = redis.call('HMGET', KEYS[1], 'b', 'c', 's', 'n')
if not h[2] or h[1] ~= ARGV[1] then return false end
local s = tonumber(h[3])
local head = s - tonumber(h[4]) + 1
local lo = tonumber(ARGV[2])
local hi = tonumber(ARGV[3])
if hi < lo then return {} end
if lo < head or hi > s then return false end
local items = redis.call('LRANGE', KEYS[2], lo - head, hi - head)
if #items ~= hi - lo + 1 then return false end
return items
