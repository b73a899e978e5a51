-- Removes delivered messages delivered at or before a cutoff, at most a
-- given number per call.
-- ARGV: 1 prefix, 2 cutoff (ms), 3 limit. Returns {removed, more (0/1)}.
local P = ARGV[1]
local limit = tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', P .. 'done', '-inf', ARGV[2], 'LIMIT', 0, limit + 1)
local removed = 0
for i = 1, math.min(#ids, limit) do
  redis.call('DEL', P .. 'm:' .. ids[i])
  redis.call('ZREM', P .. 'done', ids[i])
  removed = removed + 1
end
local more = 0
if #ids > limit then
  more = 1
end
return {removed, more}
