
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'v', 1, 'b', ARGV[1], 'c', ARGV[2], 's', 0, 'n', 0, 'y', '', 'q', ARGV[3], 'a', '1')
redis.call('HSET', KEYS[3], LOADED, '1')
expire_all(tonumber(ARGV[4]))
return 1
