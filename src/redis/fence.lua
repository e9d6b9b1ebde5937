-- fence.lua: raises a name's fencing counter to at least a token (Redlock writes its token back to the
-- instances that granted it). Standalone: not prepended with common.lua.
-- KEYS[1] C      the name's fencing counter (see common.lua)
-- ARGV[1] token  the token granted
-- ARGV[2] ttl    keep the counter at least this many milliseconds (plus a grace)
-- Returns the counter's value afterwards.
local token, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if token > last then
  redis.call('SET', KEYS[1], string.format('%.0f', token), 'KEEPTTL')
  last = token
end
local left = redis.call('PTTL', KEYS[1])
if left == -1 or (left >= 0 and left < ttl + 20) then
  redis.call('PEXPIRE', KEYS[1], ttl + 20)
end
return last
