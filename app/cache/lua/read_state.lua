
local h = redis.call('HMGET', KEYS[1], 'b', 'c')
if not h[2] or h[1] ~= ARGV[1] then return false end
local all = redis.call('HGETALL', KEYS[3])
if #all == 0 then return false end
return all
