-- KEYS: API keys (hash: sha256 -> JSON record), rate buckets' prefix
-- ARGV: sha256 of the presented key, now
-- Who is calling, and one request against its key's rate, in one round trip.
-- Returns {0} for an unknown key, else {1, the record, allowed (1|0), ms to wait}.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {0} end
local record = cjson.decode(raw)
local rate = tonumber(record.rate_per_s) or 20
local verdict = take_token(KEYS[2] .. record.id, tonumber(ARGV[2]), rate, math.max(1, rate))
return {1, raw, verdict[1], verdict[2]}
