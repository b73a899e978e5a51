-- Refresh one agent's heartbeat and answer who is alive, on server time.
--
-- KEYS[1] sorted set of live agents; score = expiry, µs of server time
-- ARGV[1] this agent's member string
-- ARGV[2] time to live of a heartbeat, µs
-- ARGV[3] '' for server time; a number of µs only in tests
--
-- Reply: the members whose heartbeat has not expired, this one included.

local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local ttl = tonumber(ARGV[2])

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), ARGV[1])
if ARGV[3] == '' then
  -- The set outlives its last heartbeat by one ttl: an abandoned tier
  -- leaves nothing behind.
  redis.call('PEXPIRE', KEYS[1], math.floor(2 * ttl / 1000) + 1)
end
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.0f', now), '+inf')
