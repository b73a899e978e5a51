-- One shared GCRA decision over several keys, atomically, on server time.
--
-- KEYS[1]      the bot's pause key (value: pause end, µs of server time)
-- KEYS[2..n+1] the limiter keys (value: TAT, µs of server time)
-- ARGV[1]      horizon, µs: how far ahead a slot may be reserved
-- ARGV[2]      '' for server time; a number of µs only in tests
-- ARGV[3i..3i+2] interval µs, tolerance µs, never (1/0) of KEYS[i+1]
--
-- Reply {code, delta, index, now}:
--   code 1 admitted: every key charged at the slot; delta = slot - now
--   code 0 refused by rate: nothing charged; delta = slot - now
--   code 2 refused by the bot's pause: delta = pause end - now
--   code 3 refused: key `index` admits nothing (rate 0)
-- `index` names the key that set the slot (0: none did). All times are µs;
-- they stay below 2^53, so the doubles Lua computes with are exact.

local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local n = #KEYS - 1

for i = 1, n do
  if ARGV[3 * i + 2] == '1' then
    return {3, 0, i, now}
  end
end

local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > now then
  return {2, paused - now, 0, now}
end

local tats = {}
local slot = now
local index = 0
for i = 1, n do
  local tat = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
  tats[i] = tat
  local earliest = tat - tonumber(ARGV[3 * i + 1])
  if earliest > slot then
    slot = earliest
    index = i
  end
end

if slot - now > tonumber(ARGV[1]) then
  return {0, slot - now, index, now}
end

for i = 1, n do
  local tat = math.max(tats[i], slot) + tonumber(ARGV[3 * i])
  local value = string.format('%.0f', tat)
  if ARGV[2] ~= '' then
    redis.call('SET', KEYS[i + 1], value)
  else
    -- A TAT in the past decides like a fresh key, so the key may go once
    -- its TAT has passed; one second of slack covers rounding.
    local ttl = math.floor((tat - now) / 1000) + 1001
    redis.call('SET', KEYS[i + 1], value, 'PX', ttl)
  end
end
return {1, slot - now, index, now}
