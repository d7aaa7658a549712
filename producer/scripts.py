"""The Lua scripts that change status: each runs atomically in Redis, so batch counters always
equal the sum of their jobs' states.

Records (producer/records.py) are read and written as 9-byte strings with GETRANGE/SETRANGE and
Lua's `struct`. The scripts address a batch's record shards by name (`rec_prefix .. shard`) when
they expire or keep them with their batch: one standalone Redis (or a primary with replicas) is
the supported deployment, not Redis Cluster.
"""

from __future__ import annotations

from producer import records

_COMMON = """
local SHARD, REC = __SHARD__, __REC__
local EXISTS, RECEIVED, LOW = __EXISTS__, __RECEIVED__, __LOW__

local function each_shard(batch, rec_prefix, command, arg)
  local span = tonumber(redis.call('HGET', batch, 'span') or '0')
  for s = 0, math.floor((span - 1) / SHARD) do
    if arg then redis.call(command, rec_prefix .. s, arg) else redis.call(command, rec_prefix .. s) end
  end
end

-- flags, seed, created of the record at `index`, or nil for none
local function read_record(rec, index)
  local at = (index % SHARD) * REC
  local raw = redis.call('GETRANGE', rec, at, at + REC - 1)
  if #raw < REC or string.byte(raw, 1) == 0 then return nil end
  return struct.unpack('>BI4I4', raw)
end

local function mark_received(rec, index, flags)
  redis.call('SETRANGE', rec, (index % SHARD) * REC, string.char(bit.bor(flags, RECEIVED)))
end

-- count `fresh` new jobs into the batch, move its span, reopen it if it had finished
local function add_fresh(batch, fresh, span, now, rec_prefix)
  if fresh > 0 then
    redis.call('HINCRBY', batch, 'total', fresh)
    redis.call('HINCRBY', batch, 'queued', fresh)
  end
  if span > tonumber(redis.call('HGET', batch, 'span') or '0') then redis.call('HSET', batch, 'span', span) end
  redis.call('HSETNX', batch, 'ct', now)
  if fresh > 0 and redis.call('HEXISTS', batch, 'ft') == 1 then
    redis.call('HDEL', batch, 'ft')
    redis.call('PERSIST', batch)
    each_shard(batch, rec_prefix, 'PERSIST')
  end
end
"""

# KEYS: batch, record shard, [list to push onto, other lists of the queue (to measure)]
# ARGV: now, now_s, rec_prefix, flags, jobs (big-endian u32 index + u32 seed each, indices
#       ascending, all in this shard), envelope ('' to push nothing)
# If every job is new: writes their records, pushes the envelope, returns {1, '', queue length}.
# Otherwise changes nothing and returns {0, the jobs' records (9 zero bytes = new), 0}: the
# caller sends the new ones again in a message of their own.
SUBMIT = """
local batch, rec = KEYS[1], KEYS[2]
local now, now_s, rec_prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local flags, jobs, envelope = tonumber(ARGV[4]), ARGV[5], ARGV[6]
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
  for j = 1, n do out[j] = old[j] or string.rep('\\0', REC) end
  return {0, table.concat(out), 0}
end
local record = {}
for j = 1, n do record[j] = struct.pack('>BI4I4', flags, seed[j], now_s) end
if dense then
  if #block < width then block = block .. string.rep('\\0', width - #block) end
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
add_fresh(batch, n, hi + 1, now, rec_prefix)
if envelope ~= '' then redis.call('LPUSH', KEYS[3], envelope) end
local length = 0
for i = 3, #KEYS do length = length + redis.call('LLEN', KEYS[i]) end
return {1, '', length}
"""

# KEYS: batch, then per job: its hash, its record shard
# ARGV: now, now_s, rec_prefix, low (0|1), then per job: index, seed
# A worker received a message: each job gets its hash (from its record, or new for an
# open-format message), so leases can keep its spec. Returns per job {flag, seed}:
# 0 = first seen here, 1 = known, 2 = finished and expired (only its record is left: not run again).
RECEIVE = """
local batch, now, now_s, rec_prefix = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
local low = tonumber(ARGV[4])
local out, fresh, span = {}, 0, 0
for j = 0, (#KEYS - 1) / 2 - 1 do
  local job, rec = KEYS[2 + 2 * j], KEYS[3 + 2 * j]
  local index, seed = tonumber(ARGV[5 + 2 * j]), tonumber(ARGV[6 + 2 * j])
  local sd = redis.call('HGET', job, 'sd')
  if sd then
    out[j + 1] = {1, tonumber(sd)}
  else
    local flags, stored, created = read_record(rec, index)
    if not flags then
      redis.call('HSET', job, 'st', 'queued', 'sd', seed, 'ct', now)
      if low == 1 then redis.call('HSET', job, 'pr', 'low') end
      local f = EXISTS + RECEIVED + (low == 1 and LOW or 0)
      redis.call('SETRANGE', rec, (index % SHARD) * REC, struct.pack('>BI4I4', f, seed, now_s))
      fresh = fresh + 1
      if index + 1 > span then span = index + 1 end
      out[j + 1] = {0, seed}
    elseif bit.band(flags, RECEIVED) ~= 0 then
      out[j + 1] = {2, stored}
    else
      redis.call('HSET', job, 'st', 'queued', 'sd', stored, 'ct', created)
      if bit.band(flags, LOW) ~= 0 then redis.call('HSET', job, 'pr', 'low') end
      mark_received(rec, index, flags)
      out[j + 1] = {1, stored}
    end
  end
end
add_fresh(batch, fresh, span, now, rec_prefix)
return out
"""

# KEYS: job, batch, events, leases, owners, record shard
# ARGV: to, from_csv, now, ttl, bump_attempts, job_id, index, rec_prefix, n_delete, field_1..field_n,
#       then field, value, field, value... to set.
# Returns {'ok', previous, finished} | {'refused', current} | {'missing', ''}; finished is 1 when
# this transition completed the batch. Any state but `running` drops the job's lease. A job known
# only by its record is queued: the transition first makes its hash from the record.
TRANSITION = """
local index = tonumber(ARGV[7])
local cur = redis.call('HGET', KEYS[1], 'st')
local flags, seed, created
if not cur then
  flags, seed, created = read_record(KEYS[6], index)
  if not flags or bit.band(flags, RECEIVED) ~= 0 then return {'missing', ''} end
  cur = 'queued'
end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == cur then allowed = true end end
if not allowed then return {'refused', cur} end
if flags then
  redis.call('HSET', KEYS[1], 'sd', seed, 'ct', created)
  if bit.band(flags, LOW) ~= 0 then redis.call('HSET', KEYS[1], 'pr', 'low') end
  mark_received(KEYS[6], index, flags)
end
local to = ARGV[1]
local finished = 0
redis.call('HSET', KEYS[1], 'st', to)
local n_delete = tonumber(ARGV[9])
for i = 10, 9 + n_delete do redis.call('HDEL', KEYS[1], ARGV[i]) end
for i = 10 + n_delete, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[1], 'a', 1) end
if cur ~= to then
  redis.call('HINCRBY', KEYS[2], cur, -1)
  redis.call('HINCRBY', KEYS[2], to, 1)
end
local ttl = tonumber(ARGV[4])
if to == 'succeeded' or to == 'failed' or to == 'canceled' then
  redis.call('EXPIRE', KEYS[1], ttl)
  local b = redis.call('HMGET', KEYS[2], 'total', 'succeeded', 'failed', 'canceled', 'ft')
  local done = (tonumber(b[2]) or 0) + (tonumber(b[3]) or 0) + (tonumber(b[4]) or 0)
  if not b[5] and done == (tonumber(b[1]) or -1) then
    redis.call('HSET', KEYS[2], 'ft', ARGV[3])
    redis.call('EXPIRE', KEYS[2], ttl)
    each_shard(KEYS[2], ARGV[8], 'EXPIRE', ttl)
    finished = 1
  end
elseif to == 'queued' or to == 'running' then
  redis.call('PERSIST', KEYS[1])
  if redis.call('HEXISTS', KEYS[2], 'ft') == 1 then
    redis.call('HDEL', KEYS[2], 'ft')
    redis.call('PERSIST', KEYS[2])
    each_shard(KEYS[2], ARGV[8], 'PERSIST')
  end
end
if to ~= 'running' then
  redis.call('ZREM', KEYS[4], ARGV[6])
  redis.call('HDEL', KEYS[5], ARGV[6])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '100000', '*', 'job', ARGV[6], 'state', to)
return {'ok', cur, finished}
"""


def lua(script: str) -> str:
    """A script with the shared helpers and the record layout's constants filled in."""
    constants = {
        "__SHARD__": records.SHARD_JOBS,
        "__REC__": records.RECORD_BYTES,
        "__EXISTS__": records.EXISTS,
        "__RECEIVED__": records.RECEIVED,
        "__LOW__": records.LOW,
    }
    text = _COMMON + script
    for token, value in constants.items():
        text = text.replace(token, str(value))
    return text
