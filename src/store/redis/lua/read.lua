-- Reads one message with the lease of its partition, in one atomic step, so
-- a caller can judge fencing and state from a consistent picture.
-- A message is stored as '<version>:<partition>:<record bytes>'.
-- ARGV: 1 prefix, 2 id. Returns nil for an unknown id, else
-- {record, version, partition, lease owner, lease token}.
local stored = redis.call('GET', ARGV[1] .. 'm:' .. ARGV[2])
if not stored then
  return false
end
local version, part, start = string.match(stored, '^(%d+):(%d+):()')
if not version then
  return redis.error_reply('ERR herald: malformed message value')
end
local lease = redis.call('HMGET', ARGV[1] .. 'l:' .. part, 'owner', 'token')
return {string.sub(stored, start), version, part, lease[1] or '', lease[2] or ''}
