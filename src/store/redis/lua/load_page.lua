-- One page of a partition's open messages, in accept order, for the lease
-- holder. The first page (ARGV[6] = '') also fixes the load's upper bound:
-- the partition's accept sequence and the feed's last entry, read together,
-- so every message is either in the load (sequence <= bound) or after the
-- feed cursor, never both, never neither. It trims the feed up to that
-- cursor: this load covers everything before it.
-- ARGV: 1 prefix, 2 partition, 3 owner, 4 token, 5 lower bound (exclusive
-- sequence, e.g. '(0'), 6 upper bound sequence ('' on the first page),
-- 7 page size.
-- Returns {-1} when fenced, else {1, bound, cursor, seq, id, record, ...}.
local P, part = ARGV[1], ARGV[2]
local lease = redis.call('HMGET', P .. 'l:' .. part, 'owner', 'token')
if lease[1] ~= ARGV[3] or lease[2] ~= ARGV[4] then
  return {-1}
end
local bound, cursor = ARGV[6], ''
local feed = P .. 's:' .. part
if bound == '' then
  bound = redis.call('HGET', P .. 'pm:' .. part, 'seq') or '0'
  local last = redis.call('XREVRANGE', feed, '+', '-', 'COUNT', 1)
  if last[1] then
    cursor = last[1][1]
    redis.call('XTRIM', feed, 'MINID', '~', cursor)
  else
    cursor = '0-0'
  end
end
local out = {1, bound, cursor}
local page = redis.call('ZRANGEBYSCORE', P .. 'o:' .. part, ARGV[5], bound,
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[7]))
for i = 1, #page, 2 do
  out[#out + 1] = page[i + 1]
  out[#out + 1] = page[i]
  local stored = redis.call('GET', P .. 'm:' .. page[i])
  out[#out + 1] = stored and string.sub(stored, string.match(stored, '^%d+:%d+:()') or 1) or ''
end
return out
