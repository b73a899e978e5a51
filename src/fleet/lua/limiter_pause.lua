-- Pause every decision of one bot until server time + ARGV[1] µs (a 429's
-- retry_after). Pauses only ever extend; a duration of 0 just reads.
--
-- KEYS[1] the bot's pause key (value: pause end, µs of server time)
-- ARGV[1] duration, µs
-- ARGV[2] '' for server time; a number of µs only in tests
--
-- Reply: µs left in the pause (0: not paused).

local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local untilv = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if untilv > current and untilv > now then
  local value = string.format('%.0f', untilv)
  if ARGV[2] ~= '' then
    redis.call('SET', KEYS[1], value)
  else
    redis.call('SET', KEYS[1], value, 'PX', math.floor((untilv - now) / 1000) + 1001)
  end
  current = untilv
end
if current > now then
  return current - now
end
return 0
