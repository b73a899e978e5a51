-- Stamps a new queue with its layout version and partition count, or reads
-- the stamp of an existing one. The caller compares.
-- ARGV: 1 prefix, 2 layout version, 3 partitions
local key = ARGV[1] .. 'layout'
redis.call('HSETNX', key, 'version', ARGV[2])
redis.call('HSETNX', key, 'partitions', ARGV[3])
return redis.call('HMGET', key, 'version', 'partitions')
