-- KEYS: taken (hash of the worker), taking (sorted set: worker -> lease expiry)
-- ARGV: worker, now ('' to return whatever the lease), entry id ('' for every entry)
-- Puts taken messages back where the next pop takes them (the list's consumer end), and drops
-- them from the hash, in one step. With `now`, only once the worker's lease is past: the reaper's
-- call for a worker that stopped renewing it. Returns how many went back, or -1 if the lease is live.
if ARGV[2] ~= '' then
  local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if expiry and tonumber(expiry) > tonumber(ARGV[2]) then
    return -1
  end
end
local entries
if ARGV[3] ~= '' then
  local value = redis.call('HGET', KEYS[1], ARGV[3])
  entries = value and {ARGV[3], value} or {}
else
  entries = redis.call('HGETALL', KEYS[1])
end
for i = 1, #entries, 2 do
  local value = entries[i + 1]
  local at = string.find(value, '\n', 1, true)
  redis.call('RPUSH', string.sub(value, 1, at - 1), string.sub(value, at + 1))
  redis.call('HDEL', KEYS[1], entries[i])
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return #entries / 2
