
local v = tonumber(redis.call('HGET', KEYS[1], 'v')) or 0
if v ~= tonumber(ARGV[2]) then return 0 end
if now_ms() - tonumber(ARGV[3]) > tonumber(ARGV[4]) then return -1 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
local ns = tonumber(ARGV[11])
local first = 12 + ns
local z = 0
for k = first, #ARGV do z = z + #ARGV[k] end
redis.call('HSET', KEYS[1], 'v', v + 1, 'b', ARGV[1], 'c', ARGV[5], 's', ARGV[6], 'n', #ARGV - first + 1,
           'y', ARGV[7], 'q', ARGV[8], 'a', ARGV[9], 'z', z)
redis.call('HSET', KEYS[3], LOADED, '1')
for i = 12, first - 1, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
local j = first
while j <= #ARGV do
  local last = math.min(j + 99, #ARGV)
  redis.call('RPUSH', KEYS[2], unpack(ARGV, j, last))
  j = last + 1
end
expire_all(tonumber(ARGV[10]))
return 1
