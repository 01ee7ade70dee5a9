
tombstone(tonumber(redis.call('HGET', KEYS[1], 'v')) or 0, ARGV[1], tonumber(ARGV[2]))
return 1
