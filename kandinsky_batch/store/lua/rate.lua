-- KEYS: bucket (hash: tokens, at)   ARGV: now, rate per second, burst
-- A token bucket: refills at `rate` per second up to `burst`; takes one token if there is one.
-- Returns {1, 0} when the request may go, else {0, milliseconds until a token is back}.
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(1000 * burst / rate) + 1000)
if allowed == 1 then return {1, 0} end
return {0, math.ceil(1000 * (1 - tokens) / rate)}
