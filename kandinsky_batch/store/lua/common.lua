-- Helpers and the record layout's constants, prepended to every status script.
-- The __NAME__ tokens are filled in from kandinsky_batch/store/records.py at load time.
local SHARD, REC = __SHARD__, __REC__
local EXISTS, RECEIVED, LOW, COUNTED, HIGH = __EXISTS__, __RECEIVED__, __LOW__, __COUNTED__, __HIGH__
local PRIORITY_FLAG = {high = HIGH, normal = 0, low = LOW}
local HIGHER = {high = {}, normal = {'high'}, low = {'high', 'normal'}}  -- priorities taken first

-- the priority a record's flags say its job was submitted at
local function priority_of(flags)
  if bit.band(flags, LOW) ~= 0 then return 'low' end
  if bit.band(flags, HIGH) ~= 0 then return 'high' end
  return 'normal'
end

-- jobs of the priorities above `priority` submitted and not yet taken (queue position estimates)
local function waiting_above(counts, priority)
  local ahead = 0
  for _, p in ipairs(HIGHER[priority]) do
    local c = redis.call('HMGET', counts, Q.added .. p, Q.taken .. p)
    ahead = ahead + math.max(0, (tonumber(c[1]) or 0) - (tonumber(c[2]) or 0))
  end
  return ahead
end

-- The fair structures (store/fair.py). Per queue and priority: each tenant's waiting messages on
-- a list of its own (`base .. FAIR_TENANT .. tenant`, entries `{images}\n{envelope}`, pushed on
-- the left), the sorted set `base` of the tenants with messages waiting, scored by the virtual
-- time of their next one, and the hash `base .. FAIR_STATE`: the clock, the messages waiting and
-- where each idle tenant left off. Weighted fair queueing by images: the tenant furthest behind
-- is served next, and its time grows by the images served over its weight.

-- Queue `message` (of `images` images) behind `tenant`'s others.
local function fair_push(base, tenant, images, message)
  local state = base .. FAIR_STATE
  redis.call('LPUSH', base .. FAIR_TENANT .. tenant, images .. '\n' .. message)
  redis.call('HINCRBY', state, W.waiting, 1)
  if not redis.call('ZSCORE', base, tenant) then
    -- it starts at the clock, or where it left off if that is later: idling gains it nothing
    local at = redis.call('HMGET', state, W.clock, tenant)
    redis.call('ZADD', base, math.max(tonumber(at[1]) or 0, tonumber(at[2]) or 0), tenant)
    redis.call('HDEL', state, tenant)
  end
end

-- The next message by fair share (nil when none waits), taken off its tenant's list.
local function fair_pop(base, weights)
  local state = base .. FAIR_STATE
  while true do
    local head = redis.call('ZRANGE', base, 0, 0, 'WITHSCORES')
    if #head == 0 then return nil end
    local tenant, at = head[1], tonumber(head[2])
    local waiting = base .. FAIR_TENANT .. tenant
    local entry = redis.call('RPOP', waiting)
    if entry then
      local cut = string.find(entry, '\n', 1, true)
      local images = math.max(1, tonumber(string.sub(entry, 1, cut - 1)) or 1)
      local weight = tonumber(redis.call('HGET', weights, tenant) or '1') or 1
      local after = at + images / math.max(weight, 0.001)
      redis.call('HSET', state, W.clock, at)
      redis.call('HINCRBY', state, W.waiting, -1)
      if redis.call('LLEN', waiting) > 0 then
        redis.call('ZADD', base, after, tenant)
      else
        redis.call('ZREM', base, tenant)
        redis.call('HSET', state, tenant, after)
      end
      return string.sub(entry, cut + 1)
    end
    redis.call('ZREM', base, tenant)  -- its list is gone: it has nothing waiting
  end
end

-- The images of the message `fair_pop` would take next (nil when none waits).
local function fair_next_images(base)
  local head = redis.call('ZRANGE', base, 0, 0)
  if #head == 0 then return nil end
  local entry = redis.call('LINDEX', base .. FAIR_TENANT .. head[1], -1)
  if not entry then return 1 end  -- a tenant whose list is gone: fair_pop skips it
  return math.max(1, tonumber(string.sub(entry, 1, (string.find(entry, '\n', 1, true) or 2) - 1)) or 1)
end

-- Feed the Celery list `list` from the fair structure `base` until it holds FEED_DEPTH messages.
local function feed(list, base, weights)
  local fed = 0
  while redis.call('LLEN', list) < FEED_DEPTH do
    local message = fair_pop(base, weights)
    if not message then break end
    redis.call('LPUSH', list, message)
    fed = fed + 1
  end
  return fed
end

-- messages waiting in a fair structure
local function fair_waiting(base)
  return math.max(0, tonumber(redis.call('HGET', base .. FAIR_STATE, W.waiting) or '0') or 0)
end

local function each_shard(batch, rec_prefix, command, arg)
  local span = tonumber(redis.call('HGET', batch, B.span) or '0')
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
    redis.call('HINCRBY', batch, B.total, fresh)
    redis.call('HINCRBY', batch, 'queued', fresh)
  end
  if span > tonumber(redis.call('HGET', batch, B.span) or '0') then redis.call('HSET', batch, B.span, span) end
  redis.call('HSETNX', batch, B.created, now)
  if fresh > 0 and redis.call('HEXISTS', batch, B.finished) == 1 then
    redis.call('HDEL', batch, B.finished, B.webhook_done)
    redis.call('PERSIST', batch)
    each_shard(batch, rec_prefix, 'PERSIST')
  end
end

local TERMINAL = {succeeded = true, failed = true, canceled = true}

-- The one cap check: the tenant's unfinished jobs (usage hash `usage`) if adding `n` more would
-- pass `cap`, else nil. Every path that queues a tenant's jobs (submit, a retry) asks it.
local function over_cap(usage, cap, n)
  if not cap or cap <= 0 then return nil end
  local u = redis.call('HMGET', usage, 'queued', 'running')
  local unfinished = (tonumber(u[1]) or 0) + (tonumber(u[2]) or 0)
  if unfinished + n > cap then return unfinished end
  return nil
end

-- Keep the batch's tenant's usage (jobs by state, images stored) in step with a move.
local function count_usage(k, a, cur, to)
  if not k.usage then return end
  local tenant = redis.call('HGET', k.batch, B.tenant)
  if not tenant then return end
  local usage = k.usage .. tenant
  redis.call('HINCRBY', usage, cur, -1)
  redis.call('HINCRBY', usage, to, 1)
  if to == 'succeeded' then
    for i = 1, #a.sets, 2 do
      if a.sets[i] == F.outputs then
        redis.call('HINCRBY', usage, U.images_succeeded, #cjson.decode(a.sets[i + 1]))
      end
    end
  end
end

-- Move one job to state `to` if it is in one of `allowed` (a comma list), keeping its batch's
-- counters equal to its jobs' states; the one place a job changes state.
-- k: {job, batch, events, leases, owners, rec, running, usage (the usage keys' prefix), counts};
-- a: {job_id, index, rec_prefix, to, allowed, now, ttl, fence, bump, deletes, sets}.
-- `fence`, if not '', is the worker that must hold the job's
-- live lease. `cap`, if set, refuses sending a finished job of a tenant again past its cap.
-- Returns {'ok', previous, finished} | {'refused', current} | {'fenced', current} |
-- {'over_cap', current} | {'missing', ''}; finished is 1 when this move completed the batch. Any
-- state but `running` drops the job's lease. A job known only by its record is queued: its hash
-- is made first.
local function move(k, a)
  local cur = redis.call('HGET', k.job, F.state)
  local flags, seed, created
  if not cur then
    flags, seed, created = read_record(k.rec, a.index)
    if not flags or bit.band(flags, RECEIVED) ~= 0 then return {'missing', ''} end
    cur = 'queued'
  end
  local allowed = false
  for s in string.gmatch(a.allowed, '[^,]+') do if s == cur then allowed = true end end
  if not allowed then return {'refused', cur} end
  if a.cap and a.cap > 0 and TERMINAL[cur] and not TERMINAL[a.to] and k.usage then
    local tenant = redis.call('HGET', k.batch, B.tenant)
    if tenant and over_cap(k.usage .. tenant, a.cap, 1) then return {'over_cap', cur} end
  end
  if a.fence ~= '' then
    local score = tonumber(redis.call('ZSCORE', k.leases, a.job_id) or '-1')
    if redis.call('HGET', k.owners, a.job_id) ~= a.fence or score <= tonumber(a.now) then
      return {'fenced', cur}
    end
  end
  if flags then
    redis.call('HSET', k.job, F.seed, seed, F.created, created)
    local priority = priority_of(flags)
    if priority ~= 'normal' then redis.call('HSET', k.job, F.priority, priority) end
    mark_received(k.rec, a.index, flags)
    -- off the queue's count of waiting jobs, as a worker's receive would take it
    redis.call('HINCRBY', k.counts, Q.taken .. priority, 1)
  end
  local to, finished = a.to, 0
  redis.call('HSET', k.job, F.state, to)
  for _, field in ipairs(a.deletes) do redis.call('HDEL', k.job, field) end
  for i = 1, #a.sets, 2 do redis.call('HSET', k.job, a.sets[i], a.sets[i + 1]) end
  if a.bump ~= '' then redis.call('HINCRBY', k.job, a.bump, 1) end
  if cur ~= to then
    redis.call('HINCRBY', k.batch, cur, -1)
    redis.call('HINCRBY', k.batch, to, 1)
    count_usage(k, a, cur, to)
  end
  if TERMINAL[to] then
    redis.call('EXPIRE', k.job, a.ttl)
    local b = redis.call('HMGET', k.batch, B.total, 'succeeded', 'failed', 'canceled', B.finished)
    local done = (tonumber(b[2]) or 0) + (tonumber(b[3]) or 0) + (tonumber(b[4]) or 0)
    if not b[5] and done == (tonumber(b[1]) or -1) then
      redis.call('HSET', k.batch, B.finished, a.now)
      redis.call('EXPIRE', k.batch, a.ttl)
      each_shard(k.batch, a.rec_prefix, 'EXPIRE', a.ttl)
      finished = 1
    end
  else
    redis.call('PERSIST', k.job)
    if redis.call('HEXISTS', k.batch, B.finished) == 1 then
      redis.call('HDEL', k.batch, B.finished, B.webhook_done)
      redis.call('PERSIST', k.batch)
      each_shard(k.batch, a.rec_prefix, 'PERSIST')
    end
  end
  if to == 'running' then
    redis.call('ZADD', k.running, a.now, a.job_id)
  else
    redis.call('ZREM', k.running, a.job_id)
    redis.call('ZREM', k.leases, a.job_id)
    redis.call('HDEL', k.owners, a.job_id)
  end
  redis.call('XADD', k.events, 'MAXLEN', '~', EVENTS_MAX, '*', E.job, a.job_id, E.state, to)
  return {'ok', cur, finished}
end

-- A token bucket in hash `bucket` (tokens, at): refills at `rate` per second up to `burst`, and
-- takes one token if there is one. Returns {1, 0} when the request may go, else {0, ms to wait}.
local function take_token(bucket, now, rate, burst)
  local state = redis.call('HMGET', bucket, 'tokens', 'at')
  local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
  tokens = math.min(burst, tokens + (now - at) * rate)
  local allowed = 0
  if tokens >= 1 then
    tokens = tokens - 1
    allowed = 1
  end
  redis.call('HSET', bucket, 'tokens', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', bucket, math.ceil(1000 * burst / rate) + 1000)
  if allowed == 1 then return {1, 0} end
  return {0, math.ceil(1000 * (1 - tokens) / rate)}
end
