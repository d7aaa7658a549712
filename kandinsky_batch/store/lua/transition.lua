-- KEYS: job, batch, events, leases, owners, record shard, running, usage prefix, queue counts
-- ARGV: to, from_csv, now, ttl, bump (a field to add 1 to, or ''), job_id, index, rec_prefix,
--       fence (the worker that must hold the live lease, or ''), cap (the most unfinished jobs
--       the batch's tenant may have, for a finished job sent again; 0 for no cap),
--       spent mode (the job's mode when the move counts what it spent, or ''), spent GPU
--       micro-seconds, spent cost in billionths (or ''), n_delete,
--       field_1..field_n, then field, value, field, value... to set.
-- Returns what `move` (common.lua) returns.
local n_delete = tonumber(ARGV[14])
local deletes, sets = {}, {}
for i = 15, 14 + n_delete do deletes[#deletes + 1] = ARGV[i] end
for i = 15 + n_delete, #ARGV do sets[#sets + 1] = ARGV[i] end
local moved = move(
  {job = KEYS[1], batch = KEYS[2], events = KEYS[3], leases = KEYS[4], owners = KEYS[5], rec = KEYS[6],
   running = KEYS[7], usage = KEYS[8],
   counts = KEYS[9]},
  {to = ARGV[1], allowed = ARGV[2], now = ARGV[3], ttl = tonumber(ARGV[4]), bump = ARGV[5],
   job_id = ARGV[6], index = tonumber(ARGV[7]), rec_prefix = ARGV[8], fence = ARGV[9],
   cap = tonumber(ARGV[10]), deletes = deletes, sets = sets})
-- What the job spent generating, added to its batch's counters and its tenant's usage by the move
-- that stored it: a job that moved once is counted once.
local mode = ARGV[11]
if moved[1] == 'ok' and mode ~= '' then
  local hashes = {KEYS[2]}
  local tenant = redis.call('HGET', KEYS[2], B.tenant)
  if tenant then hashes[2] = KEYS[8] .. tenant end
  for _, hash in ipairs(hashes) do
    redis.call('HINCRBY', hash, S.gpu_us .. mode, ARGV[12])
    if ARGV[13] ~= '' then redis.call('HINCRBY', hash, S.cost_n .. mode, ARGV[13]) end
  end
end
return moved
