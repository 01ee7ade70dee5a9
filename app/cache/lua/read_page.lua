
local h = redis.call('HMGET', KEYS[1], 'v', 'b', 'c', 's', 'n', 'q')
if not h[3] or h[2] ~= ARGV[1] then return {0, tonumber(h[1]) or 0, now_ms()} end
if ARGV[2] ~= '' and h[6] ~= ARGV[2] then return {3} end
local s = tonumber(h[4])
local n = tonumber(h[5])
local upper = s + 1
local cap = tonumber(ARGV[5])
if cap >= 0 and cap < upper then upper = cap end
local lower = tonumber(ARGV[4])
local size = tonumber(ARGV[6])
local lo, hi
if ARGV[3] == '1' then
  lo = lower + 1
  hi = math.min(upper - 1, lower + size)
else
  lo = math.max(lower + 1, upper - size)
  hi = upper - 1
end
if hi < lo then return {1, s, {}} end
local head = s - n + 1
if lo < head then return {2} end
local items = redis.call('LRANGE', KEYS[2], lo - head, hi - head)
if #items ~= hi - lo + 1 then return {0, tonumber(h[1]) or 0, now_ms()} end
return {1, s, items}
