-- KEYS: job, batch, events, leases, owners, record shard, running, usage prefix, queue counts,
--       dead letters
-- ARGV: now, ttl, job_id, index, rec_prefix, max_attempts, dead_letters_max, error code,
--       error message (a format with one %d: the crash count)
-- A running job whose worker died: count the crash, then back to queued, or, at max_attempts,
-- failed with the code and pushed onto the dead letters. One step, so a dead letter is never
-- listed without its failure, nor a crash counted without its hand-back.
-- Returns {outcome, previous, finished, crashes}: outcome 'queued' | 'failed' | 'refused'.
local cur = redis.call('HGET', KEYS[1], F.state)
if cur ~= 'running' then return {'refused', cur or '', 0, 0} end
local crashes = redis.call('HINCRBY', KEYS[1], F.crashes, 1)
local k = {job = KEYS[1], batch = KEYS[2], events = KEYS[3], leases = KEYS[4], owners = KEYS[5],
           rec = KEYS[6], running = KEYS[7], usage = KEYS[8],
           counts = KEYS[9]}
local a = {allowed = 'running', now = ARGV[1], ttl = tonumber(ARGV[2]), bump = '', job_id = ARGV[3],
           index = tonumber(ARGV[4]), rec_prefix = ARGV[5], fence = '', deletes = {}, sets = {}}
if crashes >= tonumber(ARGV[6]) then
  a.to = 'failed'
  a.sets = {F.error_code, ARGV[8], F.error_message, string.format(ARGV[9], crashes), F.finished, ARGV[1]}
  local r = move(k, a)
  redis.call('LPUSH', KEYS[10], ARGV[3])
  redis.call('LTRIM', KEYS[10], 0, tonumber(ARGV[7]) - 1)
  return {'failed', r[2], r[3], crashes}
end
a.to = 'queued'
local r = move(k, a)
return {'queued', r[2], r[3], crashes}
