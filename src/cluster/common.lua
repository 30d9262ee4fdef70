-- Shared by every script. KEYS: the room's meta hash (epoch, seq, presence
-- counters), its history stream, its names hash and its nodes hash (node ->
-- local members). The names hash maps a name's key (its look-alike skeleton,
-- computed in Rust) to 'NODE SESSION NAME': the node holding it, the
-- holder's session secret and the name as written (names hold no spaces). ARGV: channel, room, node, timestamp,
-- presence limit, then the script's own arguments.
local meta, log, names, nodes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local channel, room, node, ts = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local limit = tonumber(ARGV[5])

-- A join or leave is announced in a small room, counted for the next
-- summary in a large one (the same rule as a single server's).
local function presence(kind, name)
  if redis.call('HLEN', names) <= limit then
    redis.call('PUBLISH', channel, cjson.encode({type = kind, room = room, name = name, ts = ts}))
  else
    redis.call('HINCRBY', meta, kind == 'join' and 'joined' or 'left', 1)
  end
end

-- A room nobody is in is forgotten, history and epoch included.
local function forget_if_empty()
  if redis.call('HLEN', names) == 0 then
    redis.call('DEL', meta, log, nodes)
  end
end

-- The node, session and name of a names hash value.
local function holder(value)
  return string.match(value, '^(%S+) (%S+) (.+)$')
end

-- Names held by nodes whose heartbeat key expired leave the room.
local function reap()
  for _, n in ipairs(redis.call('HKEYS', nodes)) do
    if redis.call('EXISTS', 'chat:node:' .. n) == 0 then
      local all = redis.call('HGETALL', names)
      for i = 1, #all, 2 do
        local owner, _, name = holder(all[i + 1])
        if owner == n then
          presence('leave', name)
          redis.call('HDEL', names, all[i])
        end
      end
      redis.call('HDEL', nodes, n)
    end
  end
  forget_if_empty()
end

-- The room's epoch (created if new), last seq, first held seq and history.
local function state(fresh_epoch)
  redis.call('HSETNX', meta, 'epoch', fresh_epoch)
  local epoch = redis.call('HGET', meta, 'epoch')
  local seq = tonumber(redis.call('HGET', meta, 'seq')) or 0
  local entries = redis.call('XRANGE', log, '-', '+')
  local history, first = {}, seq + 1
  for i, entry in ipairs(entries) do
    if i == 1 then first = tonumber(string.sub(entry[1], 3)) end
    history[i] = entry[2][2]
  end
  return epoch, seq, first, history
end
