-- KEYS: the weights, then pairs: a Celery list and the fair structure that feeds it
-- ARGV: none
-- Feeds each list from its structure, in fair-share order, until it holds FEED_DEPTH messages:
-- what a worker does after it takes messages, and every reaper pass. Returns how many were fed.
local fed = 0
for i = 2, #KEYS, 2 do fed = fed + feed(KEYS[i], KEYS[i + 1], KEYS[1]) end
return fed
