-- KEYS: delayed (sorted set: JSON [list, envelope] -> due time)
-- ARGV: now, limit
-- Pushes every message that is due (at most `limit`) onto its list and removes it from the set,
-- in one step: a delayed message is on exactly one of the two at any instant, whichever worker's
-- reaper runs this, and none is lost when the worker that delayed it dies.
-- Returns how many were pushed.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local item = cjson.decode(member)
  redis.call('LPUSH', item[1], item[2])
  redis.call('ZREM', KEYS[1], member)
end
return #due
