-- KEYS: the weights, a Celery list, the fair structure that feeds it
-- ARGV: tenant, then images and envelope of each message
-- Queues messages of jobs already recorded (a re-send) behind the tenant's others in the fair
-- structure, and feeds the list, in one step. Returns how many messages were queued.
for m = 1, (#ARGV - 1) / 2 do fair_push(KEYS[3], ARGV[1], tonumber(ARGV[2 * m]), ARGV[2 * m + 1]) end
feed(KEYS[2], KEYS[3], KEYS[1])
return (#ARGV - 1) / 2
