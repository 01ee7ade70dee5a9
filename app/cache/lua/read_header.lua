
local h = redis.call('HMGET', KEYS[1], 'b', 'c', 'q')
if not h[2] or h[1] ~= ARGV[1] then return {0} end
if ARGV[2] ~= '' and h[3] ~= ARGV[2] then return {3} end
return {1, h[2]}
