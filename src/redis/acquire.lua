-- acquire.lua: one grant attempt (exclusive, shared or permits), after common.lua.
-- KEYS: the nine keys of the name (see common.lua).
-- ARGV[1] channel   the change channel
-- ARGV[2] name      the lock name, as published
-- ARGV[3] owner     the acquisition's owner id
-- ARGV[4] mode      "exclusive", "shared" or "permits"
-- ARGV[5] permits   permits taken (1 unless mode is "permits"), a decimal integer stored as given
-- ARGV[6] limit     total permits (1 unless mode is "permits")
-- ARGV[7] ttl       lease and waiter registration, in milliseconds
-- ARGV[8] metadata  JSON, stored for inspection
-- ARGV[9] queue     "1": register as a waiter when not granted
-- ARGV[10] floor    the token must be at least this (Redlock's write-back; "0" otherwise)
-- Returns {1, token, arrival} when granted (arrival: the owner's place in the queue it left, or false), {0} when
-- not, {-1, field, kind, limit} when the name is in use as another kind or with another limit.
local channel, name, owner, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local permits, limit, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local permits_text = ARGV[5]
local metadata, queue, floor = ARGV[8], ARGV[9] == '1', tonumber(ARGV[10])
local kind = 'lock'
if mode == 'permits' then
  kind = 'semaphore'
end

-- Fast path: an exclusive request for a name nobody holds or waits for (R and Q hold no entry, not even an
-- expired one, so there is nothing to sweep).
if mode == 'exclusive' and redis.call('EXISTS', X, R, Q) == 0 then
  local token = math.max(tonumber(redis.call('GET', C) or '0') + 1, NOW_US, floor)
  redis.call('SET', C, fmt(token), 'PX', ttl + GRACE)
  redis.call('SET', X, x_prefix(owner) .. fmt(token) .. '|' .. NOW .. '|' .. metadata, 'PX', ttl)
  redis.call('HSET', M, 'kind', kind, 'limit', limit)
  redis.call('PEXPIRE', M, ttl)
  return { 1, token, false }
end

local swept = sweep()
if redis.call('EXISTS', X) == 1 or redis.call('EXISTS', R) == 1 or redis.call('EXISTS', Q) == 1 then
  local current = redis.call('HMGET', M, 'kind', 'limit')
  if current[1] and current[1] ~= kind then
    if swept then
      wake(channel, name, false, owner)
    end
    return { -1, 'mode', current[1], current[2] }
  end
  if kind == 'semaphore' and current[2] and tonumber(current[2]) ~= limit then
    if swept then
      wake(channel, name, false, owner)
    end
    return { -1, 'limit', current[1], current[2] }
  end
end

-- A repeated request of a holder (a retry after a lost answer) gets the same grant, extended.
local repeated = extend_grant(owner, ttl)
if repeated then
  if swept then
    wake(channel, name, false, owner)
  end
  return { 1, repeated, false }
end

local arrival = redis.call('ZSCORE', Q, owner)
local queued = arrival ~= false
if not eligible(owner, mode, permits, limit, queued) then
  if queued or queue then
    enqueue(owner, NOW_US, mode, permits_text, limit, ttl, metadata)
  end
  -- (An exclusive holder that expired is removed by Redis silently: waiters find out at their next refresh.)
  if swept then
    wake(channel, name, false, owner)
  end
  return { 0 }
end

if queued then
  redis.call('ZREM', Q, owner)
  redis.call('ZREM', QE, owner)
  redis.call('ZREM', W, owner)
  redis.call('HDEL', QI, owner)
end
local token = math.max(tonumber(redis.call('GET', C) or '0') + 1, NOW_US, floor)
redis.call('SET', C, fmt(token), 'KEEPTTL')
keep(C, ttl + GRACE)
if mode == 'exclusive' then
  redis.call('SET', X, x_prefix(owner) .. fmt(token) .. '|' .. NOW .. '|' .. metadata, 'PX', ttl)
else
  redis.call('ZADD', R, NOW + ttl, owner)
  redis.call('HSET', RI, owner, permits_text .. '|' .. fmt(token) .. '|' .. NOW .. '|' .. mode .. '|' .. metadata)
  keep(R, ttl)
  keep(RI, ttl)
end
redis.call('HSET', M, 'kind', kind, 'limit', limit)
keep(M, ttl)
-- The next waiter may be able to follow (a reader after a reader, permits to spare).
if queued or swept then
  wake(channel, name, false, owner)
end
return { 1, token, arrival }
