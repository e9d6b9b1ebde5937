-- release.lua: compare-and-delete of the owner's grant and waiter registration, after common.lua; publishes when
-- the next waiter may proceed.
-- KEYS: the nine keys of the name (see common.lua).
-- ARGV[1] channel    the change channel
-- ARGV[2] name       the lock name, as published
-- ARGV[3] owner      the owner id
-- ARGV[4] idle_too   "1": publish even when nobody is queued
-- ARGV[5] ungrant    "1": undo a grant that did not reach Redlock's quorum: delete the grant only, and (when
--                    ARGV[7] is "1") keep the owner queued, at ARGV[6] (its arrival in µs) or now
-- ARGV[6] arrival    "" or the arrival the grant took the owner from
-- ARGV[7] queue      "1": the attempt asked to be queued
-- ARGV[8] mode, ARGV[9] permits, ARGV[10] limit, ARGV[11] ttl, ARGV[12] metadata: the attempt's (for the queue)
-- Returns 1 when a grant was released, 0 otherwise (not held, expired, or only a waiter registration withdrawn).
local channel, name, owner, idle_too = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local ungrant = ARGV[5] == '1'
local prefix = x_prefix(owner)
local x = redis.call('GET', X)
-- Fast path: the owner holds the name exclusively and nobody else holds or waits (nothing to sweep).
if not ungrant and x and string.sub(x, 1, #prefix) == prefix and redis.call('EXISTS', R, Q) == 0 then
  redis.call('DEL', X, M)
  redis.call('PEXPIRE', C, GRACE)
  if idle_too then
    redis.call('PUBLISH', channel, #name .. ':' .. name .. #owner .. ':' .. owner)
  end
  return 1
end
local changed = sweep()
local released = 0
if x and string.sub(x, 1, #prefix) == prefix then
  redis.call('DEL', X)
  released = 1
elseif redis.call('ZREM', R, owner) == 1 then
  redis.call('HDEL', RI, owner)
  released = 1
end
if ungrant then
  if ARGV[7] == '1' then
    local arrival = ARGV[6]
    if arrival == '' then
      arrival = fmt(NOW_US)
    end
    enqueue(owner, arrival, ARGV[8], ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12])
  end
elseif redis.call('ZREM', Q, owner) == 1 then
  redis.call('ZREM', QE, owner)
  redis.call('ZREM', W, owner)
  redis.call('HDEL', QI, owner)
  changed = true
end
if released == 1 or changed then
  wake(channel, name, idle_too and released == 1, owner)
  settle()
end
return released
