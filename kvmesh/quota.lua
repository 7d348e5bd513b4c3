#!lua name=kvmesh_quota
-- Per-key quotas shared by gateway replicas (client: kvmesh/quota.py). Keys, one hash tag per key name:
--   KEYS[1] kvq:{<name>}:buckets  HASH  r, rt | t, tt → request / token bucket level and its last refill (ms)
--   KEYS[2] kvq:{<name>}:leases   ZSET  <request id> scored by lease deadline (ms)
--   KEYS[3] kvq:{<name>}:blocks   HASH  <gateway> → "<slots>:<deadline ms>": slots a gateway holds for its leased slice
--   KEYS[4] kvq:{<name>}:usage:<hour>  HASH  <model>|requests | prompt_tokens | cached_tokens | completion_tokens
-- Levels are integers in 1/60000 of a request or token, so a bucket of `limit` per minute refills
-- exactly `limit` units a millisecond and holds limit * 60000: no rounding, whatever the limit.
-- An absent bucket is full: each expires when it would have refilled.
-- An admission first sweeps leases past their deadline (gateways that died give their slots back).
-- A busy gateway leases a slice of a key's quota (`lease`) and admits from it without a call a
-- request; a slice is at most 1/SLICES of each limit and is granted only while a quarter of each
-- limit stays free, so near a limit every gateway asks Redis for each request again.

local UNIT = 60000
local USAGE_TTL_S = 35 * 24 * 3600
local SLICES = 64

-- A bucket of `limit` per minute at `now`, from its stored level and time (absent: full).
local function refilled(stored, at, limit, now)
  local cap = limit * UNIT
  if not stored then return cap end
  local elapsed = math.max(now - tonumber(at), 0) -- a gateway whose clock lags adds nothing
  return math.min(tonumber(stored) + elapsed * limit, cap)
end

-- Milliseconds until the bucket holds `need` units (0: it does).
local function wait_ms(lvl, need, limit)
  if lvl >= need then return 0 end
  return math.ceil((need - lvl) / limit)
end

-- Stores the levels of `buckets` ({field, level, limit} each) and keeps the hash until the
-- emptiest of them would be full again.
local function save(keys, now, buckets)
  local fields, full_in = {}, 0
  for _, b in ipairs(buckets) do
    fields[#fields + 1] = b[1]; fields[#fields + 1] = b[2]
    fields[#fields + 1] = b[1] .. 't'; fields[#fields + 1] = now
    full_in = math.max(full_in, wait_ms(b[2], b[3] * UNIT, b[3]))
  end
  if #fields == 0 then return end
  redis.call('HSET', keys[1], unpack(fields))
  if redis.call('PTTL', keys[1]) < full_in + 1000 then redis.call('PEXPIRE', keys[1], full_in + 1000) end
end

-- limit, remaining, ms until full again, for the x-ratelimit-* headers (zeros when there is no limit).
local function header(lvl, limit)
  if limit == 0 then return {0, 0, 0} end
  return {limit, math.max(math.floor(lvl / UNIT), 0), wait_ms(lvl, limit * UNIT, limit)}
end

-- Requests in flight: one a lease, plus the slots in gateways' blocks (`except`'s not counted);
-- both past their deadlines are swept first (gateways that died give their slots back).
local function in_flight(keys, now, except)
  redis.call('ZREMRANGEBYSCORE', keys[2], '-inf', now)
  local n = redis.call('ZCARD', keys[2])
  local blocks = redis.call('HGETALL', keys[3])
  for i = 1, #blocks, 2 do
    local slots, deadline = string.match(blocks[i + 1], '(%d+):(%d+)')
    if tonumber(deadline) <= now then
      redis.call('HDEL', keys[3], blocks[i])
    elseif blocks[i] ~= except then
      n = n + tonumber(slots)
    end
  end
  return n
end

-- ARGV: request id, now ms, rpm, tpm, max concurrency, prompt tokens, lease deadline ms.
-- Returns {verdict, retry ms, limit/remaining/reset ms of requests, the same of tokens}; verdict is
-- 'ok' (a request, the prompt's tokens and a slot are taken), or which limit refused ('prompt':
-- larger than the token limit, never admitted); a refusal takes nothing.
local function admit(keys, args)
  local rid, now = args[1], tonumber(args[2])
  local rpm, tpm, max_conc = tonumber(args[3]), tonumber(args[4]), tonumber(args[5])
  local prompt, deadline = tonumber(args[6]), tonumber(args[7])
  local stored = redis.call('HMGET', keys[1], 'r', 'rt', 't', 'tt')
  local r = rpm > 0 and refilled(stored[1], stored[2], rpm, now) or 0
  local t = tpm > 0 and refilled(stored[3], stored[4], tpm, now) or 0
  local verdict, retry = 'ok', 0
  if tpm > 0 and prompt > tpm then
    verdict = 'prompt'
  else
    if max_conc > 0 then
      if in_flight(keys, now) >= max_conc and redis.call('ZSCORE', keys[2], rid) == false then
        verdict, retry = 'concurrency', 1000 -- no way to know when a slot frees; ask again soon
      end
    end
    local r_wait = rpm > 0 and wait_ms(r, UNIT, rpm) or 0
    local t_wait = tpm > 0 and wait_ms(t, prompt * UNIT, tpm) or 0
    -- Name the limit that holds the request back longest: retrying sooner would be refused again.
    if r_wait > 0 and r_wait >= t_wait and r_wait > retry then verdict, retry = 'rpm', r_wait end
    if t_wait > 0 and t_wait > r_wait and t_wait > retry then verdict, retry = 'tpm', t_wait end
  end
  if verdict == 'ok' then
    local taken = {}
    if rpm > 0 then r = r - UNIT; taken[#taken + 1] = {'r', r, rpm} end
    if tpm > 0 then t = t - prompt * UNIT; taken[#taken + 1] = {'t', t, tpm} end
    save(keys, now, taken)
    if max_conc > 0 then
      redis.call('ZADD', keys[2], deadline, rid)
      if redis.call('PTTL', keys[2]) < deadline - now then redis.call('PEXPIRE', keys[2], deadline - now) end
    end
  end
  local out = {verdict, retry}
  for _, v in ipairs(header(r, rpm)) do out[#out + 1] = v end
  for _, v in ipairs(header(t, tpm)) do out[#out + 1] = v end
  return out
end

local function take_tokens(keys, tokens, tpm, now)
  if tpm <= 0 or tokens <= 0 then return end
  local stored = redis.call('HMGET', keys[1], 't', 'tt')
  save(keys, now, {{'t', refilled(stored[1], stored[2], tpm, now) - tokens * UNIT, tpm}}) -- may go below zero
end

-- ARGV: tokens, tpm, now ms. Completion tokens as they stream (KEYS 1-2).
local function charge(keys, args)
  take_tokens(keys, tonumber(args[1]), tonumber(args[2]), tonumber(args[3]))
  return 1
end

local function add_usage(usage, model, requests, prompt, cached, completion)
  redis.call('HINCRBY', usage, model .. '|requests', requests)
  redis.call('HINCRBY', usage, model .. '|prompt_tokens', prompt)
  redis.call('HINCRBY', usage, model .. '|cached_tokens', cached)
  redis.call('HINCRBY', usage, model .. '|completion_tokens', completion)
  redis.call('EXPIRE', usage, USAGE_TTL_S)
end

-- ARGV: request id, now ms, tokens still to charge, tpm, model, prompt, cached, completion tokens.
-- Frees the request's slot, charges what its last charge() missed and adds it to the hour's usage.
local function release(keys, args)
  redis.call('ZREM', keys[2], args[1])
  take_tokens(keys, tonumber(args[3]), tonumber(args[4]), tonumber(args[2]))
  add_usage(keys[4], args[5], 1, args[6], args[7], args[8])
  return 1
end

-- KEYS[1]: a usage record. ARGV: model, requests, prompt, cached, completion tokens: what a
-- gateway's leased requests of that model and hour used.
local function usage(keys, args)
  add_usage(keys[1], args[1], args[2], args[3], args[4], args[5])
  return 1
end

-- A slice of a bucket at level `lvl`: `want`, at most 1/SLICES of the limit, at least `need`,
-- and only while a quarter of the limit stays in the bucket; -1 when it cannot be had, 0 with no limit.
local function slice(lvl, limit, want, need)
  if limit == 0 then return 0 end
  local n = math.min(want, math.floor(limit / SLICES))
  if n < need or lvl - n * UNIT < limit * UNIT / 4 then return -1 end
  return n
end

-- ARGV: gateway, now ms, rpm, tpm, max concurrency, block deadline ms, requests and tokens given
-- back (tokens may be negative: completion tokens past the slice), slots in use, requests, tokens
-- and spare slots wanted (0 requests: give back only), the tokens of the request waiting for it.
-- Returns {1 granted | 0, requests, tokens, spare slots granted, the x-ratelimit-* figures as admit}.
-- The gateway's block holds its slots in use and the spare ones granted, until the deadline.
-- A slice is granted whole or not at all: every limit the key has must spare its share.
local function lease(keys, args)
  local holder, now = args[1], tonumber(args[2])
  local rpm, tpm, max_conc = tonumber(args[3]), tonumber(args[4]), tonumber(args[5])
  local deadline, back_r, back_t = tonumber(args[6]), tonumber(args[7]), tonumber(args[8])
  local in_use, want_r, want_t, want_c = tonumber(args[9]), tonumber(args[10]), tonumber(args[11]), tonumber(args[12])
  local need_t = tonumber(args[13])
  local stored = redis.call('HMGET', keys[1], 'r', 'rt', 't', 'tt')
  local r = rpm > 0 and math.min(refilled(stored[1], stored[2], rpm, now) + back_r * UNIT, rpm * UNIT) or 0
  local t = tpm > 0 and math.min(refilled(stored[3], stored[4], tpm, now) + back_t * UNIT, tpm * UNIT) or 0
  local got_r, got_t, got_c = slice(r, rpm, want_r, 1), slice(t, tpm, want_t, need_t), 0
  if max_conc > 0 then
    local free = (max_conc - in_flight(keys, now, holder) - in_use) * UNIT -- a bucket's level, as it were
    got_c = slice(free, max_conc, want_c, 1)
  end
  local granted = want_r > 0 and got_r >= 0 and got_t >= 0 and got_c >= 0
  if not granted then got_r, got_t, got_c = 0, 0, 0 end
  local levels = {}
  if rpm > 0 then r = r - got_r * UNIT; levels[#levels + 1] = {'r', r, rpm} end
  if tpm > 0 then t = t - got_t * UNIT; levels[#levels + 1] = {'t', t, tpm} end
  save(keys, now, levels)
  if max_conc > 0 and in_use + got_c > 0 then
    redis.call('HSET', keys[3], holder, string.format('%d:%d', in_use + got_c, deadline))
    if redis.call('PTTL', keys[3]) < deadline - now then redis.call('PEXPIRE', keys[3], deadline - now) end
  else
    redis.call('HDEL', keys[3], holder)
  end
  local out = {granted and 1 or 0, got_r, got_t, got_c}
  for _, v in ipairs(header(r, rpm)) do out[#out + 1] = v end
  for _, v in ipairs(header(t, tpm)) do out[#out + 1] = v end
  return out
end

redis.register_function('kvmesh_quota_admit', admit)
redis.register_function('kvmesh_quota_charge', charge)
redis.register_function('kvmesh_quota_release', release)
redis.register_function('kvmesh_quota_usage', usage)
redis.register_function('kvmesh_quota_lease', lease)
