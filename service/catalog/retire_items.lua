-- Retire or restore items (service/catalog/redis_retirements.py). Retirements are keyed by
-- external id, shared by every bundle version.
-- KEYS: state (hash id -> Retirement JSON), seq, events (stream).
-- ARGV: retired ('1'/'0'), at (unix seconds), stream maxlen, then the item ids.
-- An id already in the asked state is left alone (its stored JSON is returned; a restore
-- of an id never retired returns a JSON with seq 0 and writes nothing); every other gets
-- a new revision, its state in the hash and an entry on the stream. Returns one JSON per id.
local retired = ARGV[1] == '1'
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local cur = redis.call('HGET', KEYS[1], id)
  local held = cur and cjson.decode(cur).retired or false
  if held == retired then
    out[#out + 1] = cur or cjson.encode({id = id, retired = false, seq = 0, at = 0})
  else
    local seq = redis.call('INCR', KEYS[2])
    local js = cjson.encode({id = id, retired = retired, seq = seq, at = tonumber(ARGV[2])})
    redis.call('HSET', KEYS[1], id, js)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'retirement', js)
    out[#out + 1] = js
  end
end
return out
