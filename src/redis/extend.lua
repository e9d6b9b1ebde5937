-- extend.lua: compare-and-swap extension of the owner's grant, after common.lua.
-- KEYS: the nine keys of the name (see common.lua).
-- ARGV[1] channel  the change channel
-- ARGV[2] name     the lock name, as published
-- ARGV[3] owner    the holder's owner id
-- ARGV[4] ttl      the new lease, in milliseconds from now
-- Returns "extended", "stolen" (another owner holds the name exclusively) or "expired".
local channel, name, owner, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if sweep() then
  wake(channel, name, false, '')
end
if extend_grant(owner, ttl) then
  return 'extended'
end
-- Another owner holds the name exclusively.
if redis.call('EXISTS', X) == 1 then
  return 'stolen'
end
return 'expired'
