-- Writes new records of one or more messages, all or none: each only if
-- nobody changed it since it was read (its version) and, for a lease
-- holder's writes, only while the holder still holds the message's
-- partition with the token it names. Moves each message between indexes
-- and counters in the same step.
-- ARGV: 1 prefix, 2 owner ('' = no fencing), 3 message count n, then 8 per
-- message: id, expected version, token, new record, counter to decrement
-- ('' none), counter to increment ('' none), move, score for the delivered
-- index (ms).
-- move: stay (open -> open), done (open -> delivered), dead (open -> dead
-- letter), revive (dead letter -> open, announced on the partition feed),
-- purge (dead letter -> removed).
-- Returns {1} when written, else nothing is written and the answer is
-- {0, i} no such message, {-1, i} fenced, {-2, i} changed since read, for
-- the i-th message (from 1).
-- A message is stored as '<version>:<partition>:<record bytes>'.
local P, owner = ARGV[1], ARGV[2]
local n = tonumber(ARGV[3])
local parts, versions = {}, {}
for i = 1, n do
  local b = 4 + (i - 1) * 8
  local stored = redis.call('GET', P .. 'm:' .. ARGV[b])
  if not stored then
    return {0, i}
  end
  local version, part = string.match(stored, '^(%d+):(%d+):')
  if not version then
    return redis.error_reply('ERR herald: malformed message value')
  end
  if owner ~= '' then
    local lease = redis.call('HMGET', P .. 'l:' .. part, 'owner', 'token')
    if lease[1] ~= owner or lease[2] ~= ARGV[b + 2] then
      return {-1, i}
    end
  end
  if version ~= ARGV[b + 1] then
    return {-2, i}
  end
  parts[i], versions[i] = part, version
end
for i = 1, n do
  local b = 4 + (i - 1) * 8
  local id, part, move = ARGV[b], parts[i], ARGV[b + 6]
  local m = P .. 'm:' .. id
  if move == 'purge' then
    redis.call('ZREM', P .. 'dead', id)
    redis.call('DEL', m)
  else
    redis.call('SET', m, (tonumber(versions[i]) + 1) .. ':' .. part .. ':' .. ARGV[b + 3])
    if move == 'done' then
      redis.call('ZREM', P .. 'o:' .. part, id)
      redis.call('ZADD', P .. 'done', ARGV[b + 7], id)
    elseif move == 'dead' then
      redis.call('ZREM', P .. 'o:' .. part, id)
      redis.call('ZADD', P .. 'dead', 0, id)
    elseif move == 'revive' then
      redis.call('ZREM', P .. 'dead', id)
      local seq = redis.call('HINCRBY', P .. 'pm:' .. part, 'seq', 1)
      redis.call('ZADD', P .. 'o:' .. part, seq, id)
      redis.call('XADD', P .. 's:' .. part, '*', 'i', id)
    end
  end
  if ARGV[b + 4] ~= '' then
    redis.call('HINCRBY', P .. 'stats', ARGV[b + 4], -1)
  end
  if ARGV[b + 5] ~= '' then
    redis.call('HINCRBY', P .. 'stats', ARGV[b + 5], 1)
  end
end
return {1}
