-- KEYS: taken (hash of this worker), taking (sorted set: worker -> lease expiry), the weights,
--       then pairs in the order to take from, highest priority first: a source (a Celery list,
--       or a fair structure) and the Celery list its messages go back to (the list itself, or
--       the list the structure feeds)
-- ARGV: worker, lease expiry, most messages to take, entry id prefix, room (images)
-- Takes up to that many messages, from each source while it has any (so a priority's Celery list,
-- whose messages were fed first, then its fair structure in fair-share order, then the next
-- priority's), and records each in the worker's taken hash under its lease, in one step: at any
-- instant a message is on its list, in its fair structure or in the hash, so a worker killed at
-- any instant loses none; a reaper returns what it held. Then feeds the Celery lists again for
-- the other workers, except a list it popped: a message taken from there that does not fit goes
-- back to it, and one fed meanwhile would then wait there too, ahead of every tenant (the task
-- feeds its queue when it ends). From a fair structure it takes only while the next message's images fit the
-- room left: a message taken that does not fit goes back to the front of a Celery list, ahead of
-- every tenant, so taking past the room would hand one tenant the next micro-batches. Returns {list, message, entry, ...} in the order taken; empty when nothing
-- waits (nobody waits for more).
local out = {}
local weights, wanted, room = KEYS[3], tonumber(ARGV[3]), tonumber(ARGV[5])
local popped = {}
for i = 4, #KEYS, 2 do
  local source, home = KEYS[i], KEYS[i + 1]
  while #out < 3 * wanted do
    local message
    if source == home then
      message = redis.call('RPOP', source)
      if message then popped[source] = true end
    else
      local images = fair_next_images(source)
      if images and images <= room then
        message = fair_pop(source, weights)
        room = room - images
      end
    end
    if not message then
      break
    end
    local entry = ARGV[4] .. ':' .. (#out / 3)
    redis.call('HSET', KEYS[1], entry, home .. '\n' .. message)
    out[#out + 1] = home
    out[#out + 1] = message
    out[#out + 1] = entry
  end
end
if #out > 0 then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
for i = 4, #KEYS, 2 do
  if KEYS[i] ~= KEYS[i + 1] and not popped[KEYS[i + 1]] then feed(KEYS[i + 1], KEYS[i], weights) end
end
return out
