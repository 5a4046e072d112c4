-- Assign dedup ids to a batch of new items, all or nothing (service/catalog/redis_store.py).
-- KEYS: items, added, dedup, seq, events.
-- ARGV: replace ('1'/'0'), dedup_size, stream maxlen, then one JSON record per item.
-- Checks every item before writing anything; then per item: the next dedup id of its code
-- prefix, a store-wide revision, the record in the cache and `added` hashes, and an event
-- on the stream. Returns {'ok', status, json, ...} or {'bundle'|'conflict'|'full', key}.
local replace = ARGV[1] == '1'
local dedup_size = tonumber(ARGV[2])
local recs, state, used = {}, {}, {}
for i = 4, #ARGV do
  local rec = cjson.decode(ARGV[i])
  local cur = redis.call('HGET', KEYS[1], rec.id)
  local st = 'added'
  if cur then
    local c = cjson.decode(cur)
    if c.o == 'b' then return {'bundle', rec.id} end
    if c.hash == rec.hash then st = cur
    elseif replace then st = 'replaced'
    else return {'conflict', rec.id} end
  end
  recs[#recs + 1] = rec
  state[#state + 1] = st
  if st == 'added' or st == 'replaced' then
    local pk = table.concat(rec.prefix, ',')
    if used[pk] == nil then used[pk] = tonumber(redis.call('HGET', KEYS[3], pk) or '0') end
    used[pk] = used[pk] + 1
    if rec.base + used[pk] - 1 >= dedup_size then return {'full', pk} end
  end
end
local out = {'ok'}
for i, rec in ipairs(recs) do
  local st = state[i]
  if st == 'added' or st == 'replaced' then
    local pk = table.concat(rec.prefix, ',')
    rec.dedup = rec.base + redis.call('HINCRBY', KEYS[3], pk, 1) - 1
    rec.seq = redis.call('INCR', KEYS[4])
    local js = cjson.encode(rec)
    redis.call('HSET', KEYS[1], rec.id, js)
    redis.call('HSET', KEYS[2], rec.id, js)
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 'item', js)
    out[#out + 1] = st
    out[#out + 1] = js
  else
    out[#out + 1] = 'unchanged'
    out[#out + 1] = st
  end
end
return out
