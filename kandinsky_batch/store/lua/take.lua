-- KEYS: taken (hash of this worker), taking (sorted set: worker -> lease expiry), then the queue's
--       lists, normal priority first
-- ARGV: worker, lease expiry, most messages to take, entry id prefix
-- Pops up to that many messages, from the first list while it has any (so normal before low), and
-- records each in the worker's taken hash under its lease, in one step: at any instant a message
-- is on its list or in the hash, so a worker killed at any instant loses none; a reaper returns
-- what it held. Returns {list, message, entry, ...} in the order popped; empty when every list is
-- empty (nobody waits for one to fill).
local out = {}
local wanted = tonumber(ARGV[3])
for i = 3, #KEYS do
  while #out < 3 * wanted do
    local message = redis.call('RPOP', KEYS[i])
    if not message then
      break
    end
    local entry = ARGV[4] .. ':' .. (#out / 3)
    redis.call('HSET', KEYS[1], entry, KEYS[i] .. '\n' .. message)
    out[#out + 1] = KEYS[i]
    out[#out + 1] = message
    out[#out + 1] = entry
  end
end
if #out > 0 then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
return out
