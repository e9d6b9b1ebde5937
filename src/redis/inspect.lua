-- inspect.lua: a read-only snapshot of one name's holders and waiters. Standalone: not prepended with common.lua.
-- KEYS: the nine keys of the name (see common.lua).
-- Returns {now_ms, x_record or false, x_pttl, R (member, score...), RI (field, value...), Q (member, score...),
-- QE (member, score...), QI (field, value...), limit or false}; entries whose time is up are left out.
local time = redis.call('TIME')
local now = math.floor((tonumber(time[1]) * 1000000 + tonumber(time[2])) / 1000)
return {
  now,
  redis.call('GET', KEYS[1]),
  redis.call('PTTL', KEYS[1]),
  redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES'),
  redis.call('HGETALL', KEYS[3]),
  redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES'),
  redis.call('ZRANGEBYSCORE', KEYS[5], '(' .. now, '+inf', 'WITHSCORES'),
  redis.call('HGETALL', KEYS[6]),
  redis.call('HGET', KEYS[8], 'limit'),
}
