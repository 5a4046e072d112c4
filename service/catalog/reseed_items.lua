-- Put back records a replica holds but Redis lost (a restart without persistence), keeping
-- counters ahead of them so no later assignment collides (service/catalog/redis_store.py).
-- KEYS: items, added, dedup, seq, events. ARGV: stream maxlen, then one JSON record each.
-- Returns how many records were written back (ids Redis already has are left alone).
local n = 0
for i = 2, #ARGV do
  local rec = cjson.decode(ARGV[i])
  if redis.call('HEXISTS', KEYS[1], rec.id) == 0 then
    local pk = table.concat(rec.prefix, ',')
    local need = rec.dedup - rec.base + 1
    if tonumber(redis.call('HGET', KEYS[3], pk) or '0') < need then
      redis.call('HSET', KEYS[3], pk, need)
    end
    if tonumber(redis.call('GET', KEYS[4]) or '0') < rec.seq then
      redis.call('SET', KEYS[4], rec.seq)
    end
    redis.call('HSET', KEYS[1], rec.id, ARGV[i])
    redis.call('HSET', KEYS[2], rec.id, ARGV[i])
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[1], '*', 'item', ARGV[i])
    n = n + 1
  end
end
return n
