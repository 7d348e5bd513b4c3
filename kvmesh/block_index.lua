#!lua name=kvmesh_index
-- The global KV block index. Block key: kvi:{<root>}:<seq> → SET of worker ids holding the block,
-- where <root> is the sequence hash of the prompt's first block (the hash tag: every block of one
-- prefix lives in one Redis Cluster slot, so a match touches one shard). Reverse key per worker and
-- root: kvi:{<root>}:w:<worker> → SET of <seq>, for purging a worker.

-- KEYS: a request's block keys in prompt order. Returns {worker, depth, ...}: how many leading
-- blocks each worker holds; a worker drops out at its first miss.
local function match(keys, args)
  if #keys == 0 then return {} end
  local active = redis.call('SMEMBERS', keys[1])
  local n = #active
  local out = {}
  for i = 2, #keys do
    if n == 0 then return out end
    local hits = redis.call('SMISMEMBER', keys[i], unpack(active))
    -- Usually every active worker holds the block: then the active set stays as it is.
    local missed = false
    for j = 1, n do
      if hits[j] == 0 then
        missed = true
        break
      end
    end
    if missed then
      local still, kept = {}, 0
      for j = 1, n do
        if hits[j] == 1 then
          kept = kept + 1
          still[kept] = active[j]
        else
          out[#out + 1] = active[j]
          out[#out + 1] = i - 1
        end
      end
      active, n = still, kept
    end
  end
  for j = 1, n do
    out[#out + 1] = active[j]
    out[#out + 1] = #keys
  end
  return out
end

-- One event batch, as runs of changes of one kind under one root. KEYS: per run, the root's reverse
-- key then the run's block keys; ARGV[1]: worker id, then per run '+' (stored) or '-' (removed) and
-- its block count. A block's seq is the last 16 characters of its key. Returns how many
-- memberships changed.
local function apply(keys, args)
  local worker = args[1]
  local changed = 0
  local k = 1
  for r = 2, #args, 2 do
    local verb = args[r] == '+' and 'SADD' or 'SREM'
    local count = tonumber(args[r + 1])
    local reverse = keys[k]
    local seqs = {}
    for i = k + 1, k + count do
      changed = changed + redis.call(verb, keys[i], worker)
      seqs[#seqs + 1] = string.sub(keys[i], -16)
    end
    -- unpack() is bounded by Lua's C stack: a long run goes in slices.
    for first = 1, #seqs, 1000 do
      redis.call(verb, reverse, unpack(seqs, first, math.min(first + 999, #seqs)))
    end
    k = k + count + 1
  end
  return changed
end

-- KEYS: reverse keys of one worker (kvi:{<root>}:w:<worker>); ARGV[1]: worker id.
-- Drops the worker from every block it holds; returns how many blocks it held.
local function purge(keys, args)
  local worker = args[1]
  local removed = 0
  for _, reverse in ipairs(keys) do
    local prefix = string.sub(reverse, 1, string.find(reverse, '}:w:', 1, true) + 1)
    for _, seq in ipairs(redis.call('SMEMBERS', reverse)) do
      removed = removed + redis.call('SREM', prefix .. seq, worker)
    end
    redis.call('DEL', reverse)
  end
  return removed
end

redis.register_function{function_name = 'kvmesh_match', callback = match, flags = {'no-writes'}}
redis.register_function('kvmesh_apply', apply)
redis.register_function('kvmesh_purge', purge)
