-- Reads the records the lease holder's feed read announced, and trims the
-- feed up to the holder's new cursor (fenced: only the holder may trim, so
-- a stale holder can never cut entries the new one has not read).
-- ARGV: 1 prefix, 2 partition, 3 owner, 4 token, 5 new cursor, 6.. ids.
-- Returns {-1} when fenced, else {1, record or '' per id}.
local P, part = ARGV[1], ARGV[2]
local lease = redis.call('HMGET', P .. 'l:' .. part, 'owner', 'token')
if lease[1] ~= ARGV[3] or lease[2] ~= ARGV[4] then
  return {-1}
end
redis.call('XTRIM', P .. 's:' .. part, 'MINID', '~', ARGV[5])
local out = {1}
for i = 6, #ARGV do
  local stored = redis.call('GET', P .. 'm:' .. ARGV[i])
  out[#out + 1] = stored and string.sub(stored, string.match(stored, '^%d+:%d+:()') or 1) or ''
end
return out
