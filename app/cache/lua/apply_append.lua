
local h = redis.call('HMGET', KEYS[1], 'v', 'b', 'c', 's', 'n', 'y', 'z')
local v = tonumber(h[1]) or 0
local seq = tonumber(ARGV[2])
if h[3] and h[2] == ARGV[1] and tonumber(h[4]) == seq - 1
   and redis.call('LLEN', KEYS[2]) == tonumber(h[5]) then
  local n = redis.call('RPUSH', KEYS[2], ARGV[3])
  local z = (tonumber(h[7]) or 0) + #ARGV[3]
  local max = tonumber(ARGV[6])
  local max_bytes = tonumber(ARGV[9])
  while n > 1 and (n > max or z > max_bytes) do
    z = z - #redis.call('LPOP', KEYS[2])
    n = n - 1
  end
  redis.call('HSET', KEYS[1], 'v', v + 1, 'c', ARGV[4], 's', seq, 'n', n, 'z', z, 'a', '1')
  if ARGV[5] == '1' and h[6] == '' then redis.call('HSET', KEYS[1], 'y', ARGV[3]) end
  expire_all(tonumber(ARGV[7]))
  return 1
end
tombstone(v, ARGV[1], tonumber(ARGV[8]))
return 0
