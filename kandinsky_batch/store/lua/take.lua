-- KEYS: taken (hash of this worker), taking (sorted set: worker -> lease expiry), then the queue's
--       lists, normal priority first
-- ARGV: worker, lease expiry, entry id
-- Pops the next message of the first list that has one (so normal before low) and records it in
-- the worker's taken hash under its lease, in one step: at any instant the message is on its list
-- or in the hash, so a worker killed at any instant loses none; a reaper returns what it held.
-- Returns {list, message}, or false when every list is empty (nobody waits for one to fill).
for i = 3, #KEYS do
  local message = redis.call('RPOP', KEYS[i])
  if message then
    redis.call('HSET', KEYS[1], ARGV[3], KEYS[i] .. '\n' .. message)
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
    return {KEYS[i], message}
  end
end
return false
