-- KEYS: batch, queue counts, then per job: its hash, its record shard
-- ARGV: now, now_s, rec_prefix, the message's priority (high|normal|low), the list its priority's
--       messages are fed onto ('' if unknown),
--       then per job: index, seed
-- A worker received a message: each job gets its hash (from its record, or new for an
-- open-format message), so leases can keep its spec. Returns per job {flag, seed}:
-- 0 = first seen here, 1 = known, 2 = finished and expired (only its record is left: not run again).
-- Jobs taken off the queue for the first time are counted (`out:<priority>`), for queue positions;
-- jobs whose first message this is are counted off its list (`out:<list>`, flag COUNTED), so
-- `in:<list>` - `out:<list>` is the jobs carried by the messages waiting on it.
local batch, counts = KEYS[1], KEYS[2]
local now, now_s, rec_prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local priority, list = ARGV[4], ARGV[5]
local popped = 0
-- count a submitted job off its list, once
local function count_off(rec, index)
  local at = (index % SHARD) * REC
  local first = redis.call('GETRANGE', rec, at, at)
  if #first == 1 then
    local f = string.byte(first)
    if f ~= 0 and bit.band(f, COUNTED) == 0 then
      redis.call('SETRANGE', rec, at, string.char(bit.bor(f, COUNTED)))
      popped = popped + 1
    end
  end
end
local out, fresh, span, taken = {}, 0, 0, {}
for j = 0, (#KEYS - 2) / 2 - 1 do
  local job, rec = KEYS[3 + 2 * j], KEYS[4 + 2 * j]
  local index, seed = tonumber(ARGV[6 + 2 * j]), tonumber(ARGV[7 + 2 * j])
  count_off(rec, index)
  local sd = redis.call('HGET', job, F.seed)
  if sd then
    out[j + 1] = {1, tonumber(sd)}
  else
    local flags, stored, created = read_record(rec, index)
    if not flags then
      redis.call('HSET', job, F.state, 'queued', F.seed, seed, F.created, now)
      if priority ~= 'normal' then redis.call('HSET', job, F.priority, priority) end
      local f = EXISTS + RECEIVED + COUNTED + (PRIORITY_FLAG[priority] or 0)
      redis.call('SETRANGE', rec, (index % SHARD) * REC, struct.pack('>BI4I4', f, seed, now_s))
      fresh = fresh + 1
      if index + 1 > span then span = index + 1 end
      out[j + 1] = {0, seed}
    elseif bit.band(flags, RECEIVED) ~= 0 then
      out[j + 1] = {2, stored}
    else
      redis.call('HSET', job, F.state, 'queued', F.seed, stored, F.created, created)
      local p = priority_of(flags)
      if p ~= 'normal' then redis.call('HSET', job, F.priority, p) end
      mark_received(rec, index, flags)
      taken[p] = (taken[p] or 0) + 1
      out[j + 1] = {1, stored}
    end
  end
end
add_fresh(batch, fresh, span, now, rec_prefix)
for p, n in pairs(taken) do redis.call('HINCRBY', counts, Q.taken .. p, n) end
if popped > 0 and list ~= '' then redis.call('HINCRBY', counts, Q.taken .. list, popped) end
return out
