-- KEYS: auth.lua's two keys, then submit.lua's keys
-- ARGV: auth.lua's two arguments, the tenant and cap the caller made the chunk for (from the
--       key's record, as it last saw it), then submit.lua's arguments
-- A request's key check and its one-chunk submit in one round trip: the submit runs only if
-- the key is known, within its rate, and still of that tenant and cap.
-- Returns {auth's reply}, or {auth's reply, submit's reply} when the submit ran.
local function auth(KEYS, ARGV)
__SCRIPT_auth__
end
local function submit(KEYS, ARGV)
__SCRIPT_submit__
end
local given = auth({KEYS[1], KEYS[2]}, {ARGV[1], ARGV[2]})
if given[1] == 0 or given[3] == 0 then return {given} end
local record = cjson.decode(given[2])
if record.tenant ~= ARGV[3] or tonumber(record.max_queued) ~= tonumber(ARGV[4]) then return {given} end
return {given, submit({unpack(KEYS, 3)}, {unpack(ARGV, 5)})}
