-- Put back retirements a replica holds but Redis lost (a restart without persistence),
-- keeping the revision counter ahead of them (service/catalog/redis_retirements.py).
-- KEYS: state, seq, events. ARGV: stream maxlen, then one Retirement JSON each.
-- Returns how many were written back (ids Redis already has are left alone).
local n = 0
for i = 2, #ARGV do
  local rec = cjson.decode(ARGV[i])
  if redis.call('HEXISTS', KEYS[1], rec.id) == 0 then
    if tonumber(redis.call('GET', KEYS[2]) or '0') < rec.seq then
      redis.call('SET', KEYS[2], rec.seq)
    end
    redis.call('HSET', KEYS[1], rec.id, ARGV[i])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'retirement', ARGV[i])
    n = n + 1
  end
end
return n
