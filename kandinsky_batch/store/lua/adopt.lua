-- KEYS: a Celery list, a fair structure
-- ARGV: a message found on the list, the same message marked as queued through the fair
--       structures, its tenant, its images
-- A message an outside sender pushed straight onto a Celery list joins the fair share: if it is
-- still on the list, it moves to the back of its tenant's queue in the structure, in one step (a
-- worker that popped it meanwhile runs it as it was). Returns 1 if it moved.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
fair_push(KEYS[2], ARGV[3], tonumber(ARGV[4]), ARGV[2])
return 1
