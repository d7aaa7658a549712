-- KEYS: delayed (sorted set: JSON [list, fair structure, tenant, images, envelope] -> due time),
--       the weights
-- ARGV: now, limit
-- Queues every message that is due (at most `limit`) in its tenant's fair structure, feeds its
-- list, and removes it from the set, in one step: a delayed message is in exactly one place at
-- any instant, whichever worker's reaper runs this, and none is lost when the worker that delayed
-- it dies. Returns how many were queued.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local item = cjson.decode(member)
  if #item == 2 then
    redis.call('LPUSH', item[1], item[2])  -- delayed before fair structures existed: list, envelope
  else
    fair_push(item[2], item[3], item[4], item[5])
    feed(item[1], item[2], KEYS[2])
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
