-- KEYS: leases, owners   ARGV: now, expiry, reaper, job  -> 1 if the expired lease is now the reaper's
local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[4]) or '-1')
if score < 0 or score > tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[3])
return 1
