-- common.lua: helpers prepended to every state-changing script of the Redis backend. It reads no ARGV of its
-- own. Every such script gets the nine keys of one name, in this order (all share the name's {hash tag}, so they
-- live in one Redis Cluster slot):
--   KEYS[1] X   string  the exclusive holder or writer: <#owner>:<owner>|<token>|<acquiredAt>|<metadata>; PX = lease
--   KEYS[2] R   zset    shared and permit holders: owner -> lease expiry (ms)
--   KEYS[3] RI  hash    shared and permit holders: owner -> <permits>|<token>|<acquiredAt>|<mode>|<metadata>
--   KEYS[4] Q   zset    waiters: owner -> arrival (µs), the queue order
--   KEYS[5] QE  zset    waiters: owner -> registration expiry (ms)
--   KEYS[6] QI  hash    waiters: owner -> <permits>|<since>|<mode>|<metadata>
--   KEYS[7] W   zset    waiting writers (the exclusive waiters of Q): owner -> arrival (µs); new readers queue
--                       behind the first of them, so writers do not starve
--   KEYS[8] M   hash    kind ("lock" or "semaphore") and limit, while anyone holds or waits
--   KEYS[9] C   string  the last fencing token of the name
-- Times come from the server's TIME. Every key expires no earlier than its last entry, so a name whose holders
-- and waiters all vanished leaves nothing behind; expired entries are swept here, by every script, never by a
-- background job.
--
-- Fencing tokens are max(last + 1, now in µs, floor): strictly increasing while C exists, and, once C has expired
-- (or the server restarted without persistence), still greater than every earlier token, provided the server's
-- clock does not step back and a name is not granted more than once per microsecond.
local X, R, RI, Q, QE, QI, W, M, C = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local GRACE = 20
local time = redis.call('TIME')
local NOW_US = tonumber(time[1]) * 1000000 + tonumber(time[2])
local NOW = math.floor(NOW_US / 1000)

local function fmt(n)
  return string.format('%.0f', n)
end

-- Keeps `key` (if it exists) alive at least `ms` more milliseconds.
local function keep(key, ms)
  local left = redis.call('PTTL', key)
  if left == -1 or (left >= 0 and left < ms) then
    redis.call('PEXPIRE', key, ms)
  end
end

-- Runs `command key member...` over `members` in chunks (Lua's stack bounds unpack).
local function each(command, key, members)
  for i = 1, #members, 500 do
    redis.call(command, key, unpack(members, i, math.min(i + 499, #members)))
  end
end

-- Drops holders and waiter registrations whose time is up; true when any was dropped.
local function sweep()
  local swept = false
  local gone = redis.call('ZRANGEBYSCORE', R, '-inf', NOW)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', R, '-inf', NOW)
    each('HDEL', RI, gone)
    swept = true
  end
  gone = redis.call('ZRANGEBYSCORE', QE, '-inf', NOW)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', QE, '-inf', NOW)
    each('ZREM', Q, gone)
    each('ZREM', W, gone)
    each('HDEL', QI, gone)
    swept = true
  end
  return swept
end

-- The prefix of X's value when `owner` holds it.
local function x_prefix(owner)
  return #owner .. ':' .. owner .. '|'
end

-- Extends `owner`'s grant (exclusive, shared or permits) to `ttl` ms from now; returns its token, or nil when
-- the owner holds nothing (after the sweep).
local function extend_grant(owner, ttl)
  local prefix = x_prefix(owner)
  local x = redis.call('GET', X)
  if x and string.sub(x, 1, #prefix) == prefix then
    redis.call('PEXPIRE', X, ttl)
    keep(M, ttl)
    keep(C, ttl + GRACE)
    return tonumber(string.match(x, '^(%d+)', #prefix + 1))
  end
  local held = redis.call('HGET', RI, owner)
  if held then
    redis.call('ZADD', R, NOW + ttl, owner)
    keep(R, ttl)
    keep(RI, ttl)
    keep(M, ttl)
    keep(C, ttl + GRACE)
    return tonumber(string.match(held, '^%d+|(%d+)'))
  end
  return nil
end

local function held_permits()
  local total = 0
  local records = redis.call('HVALS', RI)
  for i = 1, #records do
    total = total + tonumber(string.match(records[i], '^(%d+)'))
  end
  return total
end

-- Whether `owner` (queued or not) may be granted now.
local function eligible(owner, mode, permits, limit, queued)
  if mode == 'exclusive' then
    if redis.call('EXISTS', X) == 1 or redis.call('EXISTS', R) == 1 then
      return false
    end
    local first = redis.call('ZRANGE', Q, 0, 0)[1]
    return first == nil or first == owner
  elseif mode == 'shared' then
    if redis.call('EXISTS', X) == 1 then
      return false
    end
    local writer = redis.call('ZRANGE', W, 0, 0)[1]
    if writer == nil then
      return true
    end
    return queued and redis.call('ZRANK', Q, owner) < redis.call('ZRANK', Q, writer)
  else
    if held_permits() + permits > limit then
      return false
    end
    local first = redis.call('ZRANGE', Q, 0, 0)[1]
    return first == nil or first == owner
  end
end

-- Publishes `<#name>:<name><#cause>:<cause><owner>` when the first waiter may proceed now (its owner is woken), or,
-- with `idle_too`, `<#name>:<name><#cause>:<cause>` when nobody is queued (every local waiter of the name is woken).
-- `cause` is the owner whose grant, release or withdrawal made the change ("" for a sweep): Redlock's instances
-- publish the same change once each, and processes count it once.
local function wake(channel, name, idle_too, cause)
  local head = #name .. ':' .. name .. #cause .. ':' .. cause
  local first = redis.call('ZRANGE', Q, 0, 0)[1]
  if first == nil then
    if idle_too then
      redis.call('PUBLISH', channel, head)
    end
    return
  end
  local record = redis.call('HGET', QI, first)
  local permits, mode = string.match(record, '^(%d+)|%d+|(%a+)|')
  local limit = tonumber(redis.call('HGET', M, 'limit') or '1')
  if eligible(first, mode, tonumber(permits), limit, true) then
    redis.call('PUBLISH', channel, head .. first)
  end
end

-- Registers `owner` as a waiter arriving at `arrival` (µs), or refreshes its registration; keeps the queue's keys
-- (and the name's kind and limit) alive at least `ttl` ms.
local function enqueue(owner, arrival, mode, permits, limit, ttl, metadata)
  if redis.call('ZSCORE', Q, owner) == false then
    redis.call('ZADD', Q, arrival, owner)
    redis.call('HSET', QI, owner, permits .. '|' .. NOW .. '|' .. mode .. '|' .. metadata)
    if mode == 'exclusive' then
      redis.call('ZADD', W, arrival, owner)
    end
  end
  redis.call('ZADD', QE, NOW + ttl, owner)
  redis.call('HSET', M, 'kind', mode == 'permits' and 'semaphore' or 'lock', 'limit', limit)
  keep(Q, ttl)
  keep(QE, ttl)
  keep(QI, ttl)
  keep(W, ttl)
  keep(M, ttl)
end

-- After a release or a withdrawal: a name nobody holds or waits for keeps nothing but its counter, for GRACE ms.
local function settle()
  if redis.call('EXISTS', X) == 0 and redis.call('EXISTS', R) == 0 and redis.call('EXISTS', Q) == 0 then
    redis.call('DEL', M)
    redis.call('PEXPIRE', C, GRACE)
  end
end

