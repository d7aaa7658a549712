-- KEYS: due (sorted set: delivery id -> next try), deliveries (hash: id -> JSON)
-- ARGV: now, limit, lease_s
-- Takes up to `limit` deliveries that are due and pushes each one's next try `lease_s` on, so
-- a dispatcher that dies while sending leaves them to be tried again, not lost.
-- Returns {id, JSON, id, JSON, ...}; a due id with no JSON is dropped.
local now, limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    redis.call('ZADD', KEYS[1], now + lease, id)
    out[#out + 1] = id
    out[#out + 1] = body
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
