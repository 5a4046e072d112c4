-- Assign dedup ids to a batch of new items, all or nothing (service/catalog/redis_store.py).
-- KEYS: items, added, dedup, seq, events, bases (the bundle's dedup base per code
-- sequence), bases_loaded (set once `bases` is complete).
-- ARGV: replace ('1'/'0'), dedup_size, stream maxlen, most placement steps, then per item
-- its JSON record and its placement order as JSON ('' for none: its own prefix only).
-- Checks and places every item before writing anything (service/catalog/placement.py: an
-- item whose own prefix is full gets the first code sequence of its order with a free
-- dedup id); then per item: the next dedup id of its code sequence, a store-wide revision,
-- the record in the cache and `added` hashes, and an event on the stream. Returns
-- {'ok', status, json, ...}, {'bundle'|'conflict', id}, {'full', key, steps} or {'nobases'}.
local replace = ARGV[1] == '1'
local dedup_size = tonumber(ARGV[2])
local max_steps = tonumber(ARGV[4])
-- Without the bundle's bases a placement could reuse a bundle item's tokens (Redis lost
-- its data and no replica has reloaded it yet): refuse, the replica reloads and retries.
if redis.call('EXISTS', KEYS[7]) == 0 then return {'nobases'} end
local recs, state, used, bases, resume = {}, {}, {}, {}, {}

-- Dedup ids taken after the base of code sequence pk: read once, then counted here.
local function taken(pk)
  if used[pk] == nil then used[pk] = tonumber(redis.call('HGET', KEYS[3], pk) or '0') end
  return used[pk]
end

-- The bundle's base of code sequence pk (0 where it has none), read once.
local function bundle_base(pk)
  if bases[pk] == nil then bases[pk] = tonumber(redis.call('HGET', KEYS[6], pk) or '0') end
  return bases[pk]
end

-- The code tokens at `step` of an order: position p takes its d_p-th code, d = the digits
-- of step in base W, the last position's lowest (models.placement.placement_prefix).
local function prefix_at(order, step)
  local w, out = #order[1], {}
  for p = #order, 1, -1 do
    local d = step % w
    out[p] = order[p][d + 1]
    step = (step - d) / w
  end
  return out
end

-- Give rec the first code sequence of its order with a free dedup id (prefix, base and
-- placement step); false and the steps tried when none has one. The steps before the one
-- an earlier item of this batch with the same order took were full then, and still are.
local function place(rec, order_json)
  local order = {}
  if order_json == '' then
    for p, t in ipairs(rec.prefix) do order[p] = {t} end
  else
    order = cjson.decode(order_json)
  end
  local w, n = #order[1], #order  -- not #order[1] ^ #order: ^ binds before #
  local steps = math.min(w ^ n, max_steps)
  for step = resume[order_json] or 0, steps - 1 do
    local prefix = prefix_at(order, step)
    local pk = table.concat(prefix, ',')
    local base = rec.base
    if step > 0 then base = bundle_base(pk) end
    if base + taken(pk) < dedup_size then
      used[pk] = used[pk] + 1
      if order_json ~= '' then resume[order_json] = step end
      rec.prefix, rec.base, rec.placement = prefix, base, step
      return true, steps
    end
  end
  return false, steps
end

for i = 5, #ARGV, 2 do
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
    local own = table.concat(rec.prefix, ',')
    local placed, steps = place(rec, ARGV[i + 1])
    if not placed then return {'full', own, steps} end
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
