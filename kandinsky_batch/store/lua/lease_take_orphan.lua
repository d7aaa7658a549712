-- KEYS: leases, owners   ARGV: expiry, reaper, job  -> 1 if the job had no lease and now is the reaper's
-- For a job left `running` with no lease at all (its worker released it without handing it back).
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[2])
return 1
