
local h = redis.call('HMGET', KEYS[1], 'v', 'b', 'c', 'a')
local v = tonumber(h[1]) or 0
if h[3] and h[2] == ARGV[1] then
  local cur = redis.call('HMGET', KEYS[3], LOADED, ARGV[2])
  if cur[1] and cur[2] then
    local cv, cu = string.match(cur[2], '^(%d+):(%d+):')
    if tonumber(cv) == tonumber(ARGV[4]) - 1 and tonumber(cu) < tonumber(ARGV[5]) then
      redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
      redis.call('HSET', KEYS[1], 'v', v + 1)
      if h[4] == '1' then expire_all(tonumber(ARGV[6])) end
      return 1
    end
  end
end
tombstone(v, ARGV[1], tonumber(ARGV[7]))
return 0
