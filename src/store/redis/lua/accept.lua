-- Accepts a batch: one atomic step for all of it.
-- ARGV: 1 prefix, 2 idempotency ttl (ms), 3 message count n, then 6 per
-- message: partition, candidate id (32 lowercase hex, a UUIDv7), '=' and the
-- idempotency key ('' for none), record bytes, stats slot, mode ('a' accept,
-- 'i' import).
-- Returns, per message, the id and 0 if it was added, 1 if its idempotency
-- key named that earlier message, 2 if an import found itself already here.
--
-- Import is the spill's resync: the message was accepted by an agent that
-- could not reach Redis, under the candidate id it had just offered here.
-- That offer may have been applied after all, so import first looks for the
-- id itself and for the alias an accept leaves when it moves a candidate
-- (a:<candidate>); found, the message is already here. An import keeps its
-- id even when it is older than the partition's last one: the accept
-- sequence, not the id, orders a partition. An alias lives ten minutes (or
-- the idempotency TTL if shorter): it only has to bridge an accept applied
-- late, as Redis came back, and the resync that follows within seconds; so
-- many short-lived keys cost little memory even at high accept rates.
--
-- Ids: within a partition an id is always larger than the one before, so id
-- order is accept order even when agents' clocks disagree. A candidate that
-- is not larger than the partition's last id is replaced by that id plus
-- one (in the random low bits; a carry moves into rand_a, then into the
-- timestamp, so the result stays a UUIDv7).
local P = ARGV[1]
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local alias_ttl = math.min(ttl, 600000)

local function bump(h)
  local low = tonumber(string.sub(h, 21, 32), 16) + 1
  if low < 281474976710656 then
    return string.sub(h, 1, 20) .. string.format('%012x', low)
  end
  local ra = tonumber(string.sub(h, 14, 16), 16) + 1
  if ra < 4096 then
    return string.sub(h, 1, 13) .. string.format('%03x', ra) .. string.sub(h, 17, 20) .. '000000000000'
  end
  local ts = tonumber(string.sub(h, 1, 12), 16) + 1
  return string.format('%012x', ts) .. '7000' .. string.sub(h, 17, 20) .. '000000000000'
end

-- Numeric order of two 32-digit hex ids, in 8-digit steps: Lua's string
-- comparison follows the server's locale, not byte order.
local function not_after(a, b)
  for i = 1, 32, 8 do
    local x = tonumber(string.sub(a, i, i + 7), 16)
    local y = tonumber(string.sub(b, i, i + 7), 16)
    if x ~= y then
      return x < y
    end
  end
  return true
end

-- Partition sequences and last ids, and counter changes, are gathered in
-- the batch and written once at its end: fewer calls per message.
local metas = {}
local counts = {}
local out = {}
for i = 0, n - 1 do
  local b = 4 + i * 6
  local part, id, ikey, rec, slot, mode = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  local candidate = id
  local known, why = false, 1
  if mode == 'i' then
    if redis.call('EXISTS', P .. 'm:' .. id) == 1 then
      known, why = id, 2
    else
      known = redis.call('GET', P .. 'a:' .. id)
      why = 2
    end
  end
  if ikey ~= '' then
    ikey = P .. 'i:' .. string.sub(ikey, 2)
    if not known then
      known, why = redis.call('GET', ikey), 1
    end
  end
  if known then
    out[#out + 1] = known
    out[#out + 1] = why
  else
    local meta = metas[part]
    if not meta then
      local stored = redis.call('HMGET', P .. 'pm:' .. part, 'seq', 'last')
      meta = {seq = tonumber(stored[1] or '0'), last = stored[2]}
      metas[part] = meta
    end
    if mode ~= 'i' then
      if meta.last and not_after(id, meta.last) then
        id = bump(meta.last)
      end
      local tries = 0
      while redis.call('EXISTS', P .. 'm:' .. id) == 1 do
        tries = tries + 1
        if tries > 16 then
          return redis.error_reply('ERR herald: no unused message id near ' .. id)
        end
        id = bump(id)
      end
      if id ~= candidate then
        redis.call('SET', P .. 'a:' .. candidate, id, 'PX', alias_ttl)
      end
    end
    meta.seq = meta.seq + 1
    if not meta.last or not not_after(id, meta.last) then
      meta.last = id
    end
    redis.call('SET', P .. 'm:' .. id, '1:' .. part .. ':' .. rec)
    redis.call('ZADD', P .. 'o:' .. part, meta.seq, id)
    redis.call('XADD', P .. 's:' .. part, '*', 'i', id)
    counts[slot] = (counts[slot] or 0) + 1
    if ikey ~= '' then
      redis.call('SET', ikey, id, 'PX', ttl)
    end
    out[#out + 1] = id
    out[#out + 1] = 0
  end
end
for part, meta in pairs(metas) do
  redis.call('HSET', P .. 'pm:' .. part, 'seq', meta.seq, 'last', meta.last)
end
for slot, count in pairs(counts) do
  redis.call('HINCRBY', P .. 'stats', slot, count)
end
return out
