-- KEYS: taking (sorted set: worker -> lease expiry)
-- ARGV: worker, now, new expiry
-- Extends a worker's lease on the messages it took, unless it has run out: an expired lease is
-- never renewed (a reaper may be returning those messages). Returns 1 if renewed.
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if expiry and tonumber(expiry) > tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
