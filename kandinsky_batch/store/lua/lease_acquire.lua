-- KEYS: leases, owners, job_1..job_n   ARGV: now, expiry, worker, spec_1..spec_n
-- Returns per job: 'mine' | 'held' (alive, another worker) | 'stale' (expired lease taken over).
-- A lease a reaper holds (owner 'reaper:...') is only there while it hands the job back: a
-- worker that receives the job meanwhile takes it over ('mine'), so the job is never skipped.
local now, expiry, worker = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local out = {}
for i = 3, #KEYS do
  local job = string.match(KEYS[i], ':job:(.*)$')
  local score = tonumber(redis.call('ZSCORE', KEYS[1], job) or '-1')
  local owner = redis.call('HGET', KEYS[2], job)
  if score > now and owner and owner ~= worker and string.sub(owner, 1, 7) ~= 'reaper:' then
    out[i - 2] = 'held'
  else
    out[i - 2] = (score >= 0 and score <= now) and 'stale' or 'mine'
    redis.call('ZADD', KEYS[1], expiry, job)
    redis.call('HSET', KEYS[2], job, worker)
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HSET', KEYS[i], F.spec, ARGV[i + 1]) end
  end
end
return out
