-- Shared by every script. KEYS: the room's meta hash (epoch, seq, presence
-- counters, the time of the last message), its history stream, its names
-- hash and its nodes hash (node -> local connections). The names hash maps
-- a name's key (its look-alike skeleton, computed in Rust) to 'NODE SESSION
-- NAME' for a plain or guest name: the node holding it, the holder's session
-- secret and the name as written (names hold no spaces); or, for a token
-- holder, one person however many connections, to '+ COUNTS NAME SUB': its
-- connections per node ('NODE=N,NODE=N'), its name, and its token's `sub`
-- (last: it may hold spaces). So a person is one field, and the hash's length
-- counts persons. ARGV: channel, room, node, timestamp,
-- presence limit, how long an empty room is kept after its last message
-- (ms, `--keep-for`), then the script's own arguments.
local meta, log, names, nodes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local channel, room, node, ts = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local limit = tonumber(ARGV[5])
local keep_for = tonumber(ARGV[6])

-- A join or leave is announced in a small room, counted for the next
-- summary in a large one (the same rule as a single server's).
local function presence(kind, name)
  if redis.call('HLEN', names) <= limit then
    redis.call('PUBLISH', channel, cjson.encode({type = kind, room = room, name = name, ts = ts}))
  else
    redis.call('HINCRBY', meta, kind == 'join' and 'joined' or 'left', 1)
  end
end

-- Redis's clock in ms: the same clock that expires keys.
local function clock()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- A room nobody is in keeps its history, epoch and numbering until
-- `keep_for` after its last message (or after it emptied, if nothing was
-- said), then Redis expires them together. The next joiner then gets a new
-- epoch, which tells resuming clients that their seqs mean nothing now.
local function expire_if_empty()
  if redis.call('HLEN', names) == 0 then
    redis.call('DEL', nodes)
    local last = tonumber(redis.call('HGET', meta, 'last')) or clock()
    redis.call('PEXPIREAT', meta, last + keep_for)
    redis.call('PEXPIREAT', log, last + keep_for)
  end
end

-- A room with members never expires: its names are theirs, and its
-- numbering is what their resume positions mean.
local function hold()
  redis.call('PERSIST', meta)
  redis.call('PERSIST', log)
end

-- The node, session and name of a plain name's value; nothing for a person's.
local function holder(value)
  if string.sub(value, 1, 2) == '+ ' then
    return nil
  end
  return string.match(value, '^(%S+) (%S+) (.+)$')
end

-- A person's connections per node (a table), name and sub; nothing for a
-- plain name's value.
local function person(value)
  local counts, name, sub = string.match(value, '^%+ (%S+) (%S+) (.+)$')
  if not counts then
    return nil
  end
  local per = {}
  for n, count in string.gmatch(counts, '([^=,]+)=(%d+)') do
    per[n] = tonumber(count)
  end
  return per, name, sub
end

-- A person's value, or nil when it has no connection left on any node.
local function person_value(per, name, sub)
  local parts = {}
  for n, count in pairs(per) do
    if count > 0 then
      parts[#parts + 1] = n .. '=' .. count
    end
  end
  if #parts == 0 then
    return nil
  end
  table.sort(parts)
  return '+ ' .. table.concat(parts, ',') .. ' ' .. name .. ' ' .. sub
end

-- The name a value of either kind shows.
local function shown(value)
  local _, _, name = holder(value)
  if name then
    return name
  end
  local _, person_name = person(value)
  return person_name
end

-- Sets the person of `key` (its value `value`) to `count` connections on
-- node `n`; with none left on any node, it leaves the room, announced once.
local function person_on(key, value, n, count)
  local per, name, sub = person(value)
  per[n] = count
  local updated = person_value(per, name, sub)
  if updated then
    redis.call('HSET', names, key, updated)
  else
    presence('leave', name)
    redis.call('HDEL', names, key)
  end
end

-- Names held by nodes whose heartbeat key expired leave the room (a
-- person's connections there go, and it leaves with its last), which
-- starts to expire if that empties it and `forget`. A node that has clients
-- in the room (its presence tick, its rejoin) does not let it: an empty
-- names hash then means Redis lost them, and the node is about to claim
-- them again.
local function reap(forget)
  for _, n in ipairs(redis.call('HKEYS', nodes)) do
    if redis.call('EXISTS', 'chat:node:' .. n) == 0 then
      local all = redis.call('HGETALL', names)
      for i = 1, #all, 2 do
        local owner, _, name = holder(all[i + 1])
        if owner == n then
          presence('leave', name)
          redis.call('HDEL', names, all[i])
        elseif not owner then
          local per = person(all[i + 1])
          if per and per[n] then
            person_on(all[i], all[i + 1], n, 0)
          end
        end
      end
      redis.call('HDEL', nodes, n)
    end
  end
  if forget then
    expire_if_empty()
  end
end

-- The room's epoch, created if Redis has none. Numbering then goes on from
-- `floor`, the last seq the calling node delivered, so every node's and
-- every connection's "already delivered" marks stay valid. A created epoch
-- is published as a reset: a node that knew the room tells its clients
-- (Redis lost its data), one that did not takes it silently.
-- A node that delivered past the room's seq means Redis went back in time
-- (restarted from a snapshot or an AOF older than what it had published):
-- those seqs would be handed out again, so the room takes a new epoch too.
local function epoch(fresh, floor)
  local created = redis.call('HSETNX', meta, 'epoch', fresh) == 1
  if not created and floor > (tonumber(redis.call('HGET', meta, 'seq')) or 0) then
    redis.call('HSET', meta, 'epoch', fresh)
    created = true
  end
  if created then
    -- Above what the stream still holds too, should the meta hash have gone
    -- without it (evicted by a `volatile-*` policy): a stream's IDs only grow.
    local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)[1]
    local start = math.max(floor, top and tonumber(string.sub(top[1], 3)) or 0)
    if start > 0 then
      redis.call('HSET', meta, 'seq', start)
    end
    redis.call('PUBLISH', channel, cjson.encode({type = 'missed', count = cjson.null, epoch = fresh}))
    return fresh
  end
  return redis.call('HGET', meta, 'epoch')
end

-- Entries read from the stream per call while replaying: a batch may pass
-- the byte bound by at most this many messages, read and dropped.
local REPLAY_BATCH = 16

-- The room's epoch (created if new), last seq, and what a client replays:
-- the messages after `since` (all held when `since` is negative or of
-- another epoch than `their_epoch`), newest first until `count` messages or
-- `bytes` bytes, returned oldest first with the seq of the first of them
-- (seq + 1 when none). Only what is replayed is read: a resume with nothing
-- to replay reads nothing from the stream.
local function state(fresh_epoch, floor, their_epoch, since, count, bytes)
  local room_epoch = epoch(fresh_epoch, floor)
  local seq = tonumber(redis.call('HGET', meta, 'seq')) or 0
  if their_epoch ~= room_epoch then
    since = -1
  end
  local newest = {}
  local total, full = 0, since >= seq or count <= 0
  local upper, lower = '+', since >= 0 and ('0-' .. (since + 1)) or '-'
  while not full do
    local want = math.min(REPLAY_BATCH, count - #newest)
    local batch = redis.call('XREVRANGE', log, upper, lower, 'COUNT', want)
    for _, entry in ipairs(batch) do
      total = total + #entry[2][2]
      if total > bytes then
        full = true
        break
      end
      newest[#newest + 1] = entry
    end
    if full or #batch < want or #newest >= count then
      full = true
    else
      upper = '(' .. batch[#batch][1]
    end
  end
  local history, first = {}, seq + 1
  for i = #newest, 1, -1 do
    history[#history + 1] = newest[i][2][2]
  end
  if #newest > 0 then
    first = tonumber(string.sub(newest[#newest][1], 3))
  end
  return room_epoch, seq, first, history
end
