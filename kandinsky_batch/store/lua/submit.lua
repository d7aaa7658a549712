-- KEYS: batch, record shard, queue counts, the tenant's usage, the set of tenants, the weights,
--       [the queue's Celery lists, the one to feed first; then its fair structures, the one to
--       push into first]
-- ARGV: now, now_s, rec_prefix, flags, jobs (big-endian u32 index + u32 seed each, indices
--       ascending, all in this shard), tenant ('' for none), cap (the most unfinished jobs the
--       tenant may have; 0 for no cap), images (in these jobs), webhook (JSON, '' for none),
--       high water (the most messages the queue may hold before this push; 0 for no check),
--       how many of the KEYS are Celery lists, then images and envelope of each message to push
--       (none: push nothing)
-- If every job is new and the cap allows them: writes their records, queues the messages in the
-- tenant's fair structure and feeds its Celery list (so an idle worker starts at once), returns
-- {1, '', queue length, jobs ahead of the first one}. If some job exists: changes nothing and
-- returns {0, the jobs' records (9 zero bytes = new), 0}: the caller sends the new ones again in
-- a message of their own. Over the cap: changes nothing and returns {2, '', unfinished jobs of
-- the tenant}. At the high-water mark: changes nothing and returns {3, '', queue length}.
local batch, rec, counts, usage, tenants, weights = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now, now_s, rec_prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local flags, jobs = tonumber(ARGV[4]), ARGV[5]
local tenant, cap, images, webhook = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local high_water = tonumber(ARGV[10]) or 0
local n_lists = tonumber(ARGV[11]) or 0
local list, fair = KEYS[7], KEYS[7 + n_lists]
local messages = (#ARGV - 11) / 2
-- messages waiting on the queue's lists and in its fair structures
local function queue_length()
  local length = 0
  for i = 7, 6 + n_lists do length = length + redis.call('LLEN', KEYS[i]) end
  for i = 7 + n_lists, #KEYS do length = length + fair_waiting(KEYS[i]) end
  return length
end
local n = #jobs / 8
local index, seed = {}, {}
for j = 1, n do index[j], seed[j] = struct.unpack('>I4I4', jobs, 8 * j - 7) end
local lo, hi = index[1], index[n]
local first, width = (lo % SHARD) * REC, (hi - lo + 1) * REC
-- A chunk of consecutive lines is read and written as one range; a sparse one record by record.
local dense = hi - lo + 1 <= 8 * n
local block = dense and redis.call('GETRANGE', rec, first, first + width - 1) or nil
local old, fresh = {}, 0
for j = 1, n do
  local raw
  if dense then
    local at = (index[j] - lo) * REC + 1
    raw = string.sub(block, at, at + REC - 1)
  else
    local at = (index[j] % SHARD) * REC
    raw = redis.call('GETRANGE', rec, at, at + REC - 1)
  end
  if #raw == REC and string.byte(raw, 1) ~= 0 then old[j] = raw else fresh = fresh + 1 end
end
if fresh < n then
  local out = {}
  for j = 1, n do out[j] = old[j] or string.rep('\0', REC) end
  return {0, table.concat(out), 0}
end
local waiting = high_water > 0 and queue_length() or nil  -- measured once: the script is atomic
if waiting and waiting >= high_water then return {3, '', waiting} end
if tenant ~= '' then
  local unfinished = over_cap(usage, cap, n)
  if unfinished then return {2, '', unfinished} end
end
local record = {}
for j = 1, n do record[j] = struct.pack('>BI4I4', flags, seed[j], now_s) end
if dense then
  if #block < width then block = block .. string.rep('\0', width - #block) end
  local pieces, pos = {}, 1
  for j = 1, n do
    local at = (index[j] - lo) * REC + 1
    pieces[#pieces + 1] = string.sub(block, pos, at - 1)
    pieces[#pieces + 1] = record[j]
    pos = at + REC
  end
  pieces[#pieces + 1] = string.sub(block, pos)
  redis.call('SETRANGE', rec, first, table.concat(pieces))
else
  for j = 1, n do redis.call('SETRANGE', rec, (index[j] % SHARD) * REC, record[j]) end
end
local priority = priority_of(flags)
local before = redis.call('HINCRBY', counts, Q.added .. priority, n) - n
redis.call('HSETNX', batch, B.sequence, before - index[1])
add_fresh(batch, n, hi + 1, now, rec_prefix)
if tenant ~= '' then
  redis.call('HSETNX', batch, B.tenant, tenant)
  redis.call('SADD', tenants, tenant)
  redis.call('HINCRBY', usage, 'queued', n)
  redis.call('HINCRBY', usage, U.images_submitted, images)
end
if webhook ~= '' then redis.call('HSETNX', batch, B.webhook, webhook) end
if messages > 0 then
  local owner = tenant ~= '' and tenant or NO_TENANT
  for m = 1, messages do fair_push(fair, owner, tonumber(ARGV[10 + 2 * m]), ARGV[11 + 2 * m]) end
  redis.call('HINCRBY', counts, Q.added .. list, n)  -- jobs carried towards this list
  feed(list, fair, weights)
end
-- Ahead of the first job: what its priority has had pushed before it and not yet taken, and
-- every job of a higher priority waiting (the estimate StatusReader.queue_position makes).
local taken = tonumber(redis.call('HGET', counts, Q.taken .. priority) or '0') or 0
local ahead = math.max(0, before - taken) + waiting_above(counts, priority)
local length = waiting and waiting + messages or queue_length()
return {1, '', length, ahead}
