-- A partition's lease: owner, fencing token, expiry. Expiry is judged on the
-- Redis server's clock (TIME), so agents' clocks never matter. The token
-- only grows (the hash is never deleted), so a stale holder's token can
-- never match again.
-- A lease taken over from a holder that did not release it (its lease ran
-- out: a crash, a freeze, or Redis itself was away) marks the partition
-- `hold` until grace ms from now: that holder may have sent messages it
-- could not record yet, and records them (unfenced) when it reaches Redis
-- again. Whoever holds the partition loads it only after `hold`, so those
-- messages are not sent twice. A release leaves `hold` as it is.
-- ARGV: 1 prefix, 2 partition, 3 agent id, 4 the caller's token ('0' none),
-- 5 ttl (ms), 6 op: acquire | renew | release, 7 grace (ms).
-- acquire: {token held now (new if taken over), ms until the partition may
-- be loaded}, or {0, 0} if another holder's lease is live.
-- renew/release: 1 if the caller held the lease, else 0.
local key = ARGV[1] .. 'l:' .. ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local l = redis.call('HMGET', key, 'owner', 'token', 'exp')
local owner = l[1] or ''
local exp = tonumber(l[3] or '0')
local mine = owner == ARGV[3] and l[2] == ARGV[4]
local op = ARGV[6]
local until_ms = now + tonumber(ARGV[5])
if op == 'acquire' then
  local hold = tonumber(redis.call('HGET', key, 'hold') or '0')
  if mine then
    redis.call('HSET', key, 'exp', until_ms)
    return {tonumber(l[2]), math.max(0, hold - now)}
  end
  if owner ~= '' and exp > now then
    return {0, 0}
  end
  if owner ~= '' then
    hold = math.max(hold, now + tonumber(ARGV[7]))
    redis.call('HSET', key, 'hold', hold)
  end
  local token = redis.call('HINCRBY', key, 'token', 1)
  redis.call('HSET', key, 'owner', ARGV[3], 'exp', until_ms)
  return {token, math.max(0, hold - now)}
elseif op == 'renew' then
  if not mine then
    return 0
  end
  redis.call('HSET', key, 'exp', until_ms)
  return 1
elseif op == 'release' then
  if not mine then
    return 0
  end
  redis.call('HSET', key, 'owner', '', 'exp', 0)
  return 1
end
return redis.error_reply('ERR herald: unknown lease op')
