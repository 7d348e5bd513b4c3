#!lua name=kvmesh_load
-- In-flight load shared by router replicas. Keys (one hash tag, one slot):
--   KEYS[1] kvload:{load}:workers   HASH  <worker>:n | <worker>:p | <worker>:d → requests, prefill, decode blocks
--   KEYS[2] kvload:{load}:requests  HASH  <request id> → "<worker> <prefill> <decode> <phase 0|1>"
--   KEYS[3] kvload:{load}:deadlines ZSET  <request id> scored by lease deadline (ms)
-- Every writing call first releases up to 64 requests past their lease (gateways that vanished).
-- Decrements are written `0 - n`: Lua's -0 would reach HINCRBY as "-0", which it refuses.

local function release_one(keys, rid)
  local entry = redis.call('HGET', keys[2], rid)
  if not entry then return 0 end
  local worker, prefill, decode, phase = string.match(entry, '^(.*) (%d+) (%d+) (%d)$')
  redis.call('HINCRBY', keys[1], worker .. ':n', -1)
  if phase == '1' then
    redis.call('HINCRBY', keys[1], worker .. ':d', 0 - tonumber(decode))
  else
    redis.call('HINCRBY', keys[1], worker .. ':p', 0 - tonumber(prefill))
  end
  redis.call('HDEL', keys[2], rid)
  redis.call('ZREM', keys[3], rid)
  return 1
end

local function sweep(keys, now_ms)
  for _, rid in ipairs(redis.call('ZRANGEBYSCORE', keys[3], '-inf', now_ms, 'LIMIT', 0, 64)) do
    release_one(keys, rid)
  end
end

-- ARGV: request id, worker, prefill blocks, decode blocks, deadline ms, now ms
local function add(keys, args)
  sweep(keys, args[6])
  release_one(keys, args[1]) -- a retried id replaces its earlier entry
  redis.call('HSET', keys[2], args[1], args[2] .. ' ' .. args[3] .. ' ' .. args[4] .. ' 0')
  redis.call('ZADD', keys[3], args[5], args[1])
  redis.call('HINCRBY', keys[1], args[2] .. ':n', 1)
  redis.call('HINCRBY', keys[1], args[2] .. ':p', tonumber(args[3]))
  return 1
end

-- ARGV: request id, now ms. Moves the request's load from prefill to decode.
local function prefilled(keys, args)
  sweep(keys, args[2])
  local entry = redis.call('HGET', keys[2], args[1])
  if not entry then return 0 end
  local worker, prefill, decode, phase = string.match(entry, '^(.*) (%d+) (%d+) (%d)$')
  if phase == '1' then return 1 end
  redis.call('HINCRBY', keys[1], worker .. ':p', 0 - tonumber(prefill))
  redis.call('HINCRBY', keys[1], worker .. ':d', tonumber(decode))
  redis.call('HSET', keys[2], args[1], worker .. ' ' .. prefill .. ' ' .. decode .. ' 1')
  return 1
end

-- ARGV: request id, now ms
local function release(keys, args)
  sweep(keys, args[2])
  return release_one(keys, args[1])
end

redis.register_function('kvmesh_load_add', add)
redis.register_function('kvmesh_load_prefilled', prefilled)
redis.register_function('kvmesh_load_release', release)
