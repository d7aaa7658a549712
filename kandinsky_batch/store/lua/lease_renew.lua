-- KEYS: leases, owners   ARGV: now, expiry, worker, job_1..job_n  -> {renewed, lost}
-- Only a live lease of this worker is renewed: one that expired is lost for good (its job may be
-- handed to another worker already), so a worker that was paused past its TTL cannot revive it.
-- `lost` counts leases that are there but not renewable (expired, or another's); a job with no
-- lease at all finished (or was handed back) and counts as neither.
local renewed, lost = 0, 0
for i = 4, #ARGV do
  local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or '-1')
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[3] and score > tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
    renewed = renewed + 1
  elseif score >= 0 then
    lost = lost + 1
  end
end
return {renewed, lost}
