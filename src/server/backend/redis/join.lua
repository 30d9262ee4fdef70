-- ARGV[7]: the requested name ('' for none), ARGV[8]: its key, ARGV[9]: the
-- session secret the client came back with ('' for none), ARGV[10]: its new
-- session secret, ARGV[11]: an epoch for a new room, ARGV[12]: the last seq
-- this node delivered there, ARGV[13] and ARGV[14]: the epoch and seq the
-- client resumes after ('' and -1 for none), ARGV[15] and ARGV[16]: the most
-- messages and bytes to replay, ARGV[17]: a token holder's `sub` ('' for
-- none), ARGV[18..]: fallback names and their keys, in pairs, in order of
-- preference.
-- A requested name held under the presented session is taken back: its old
-- connection is retired by the node holding it, and nothing is announced.
-- A token holder's name is its person's: its first connection (on any node)
-- is announced, the others are counted in silently; if another `sub` or a
-- plain name holds the key, nothing is claimed and taken is 2.
-- Returns {name, taken, online, epoch, seq, first replayed seq, replay}.
reap(true)
local session, sub = ARGV[10], ARGV[17]
local function claim(name, key)
  return redis.call('HSETNX', names, key, node .. ' ' .. session .. ' ' .. name) == 1
end
local name, taken, returning, further = ARGV[7], 0, false, false
local was
if sub ~= '' and name ~= '' then
  local value = redis.call('HGET', names, ARGV[8])
  if not value then
    redis.call('HSET', names, ARGV[8], '+ ' .. node .. '=1 ' .. name .. ' ' .. sub)
  else
    local per, held_as, held_by = person(value)
    if held_by ~= sub then
      return {name, 2, 0, '', 0, 0, {}}
    end
    per[node] = (per[node] or 0) + 1
    redis.call('HSET', names, ARGV[8], person_value(per, held_as, sub))
    further = true
  end
elseif name ~= '' and not claim(name, ARGV[8]) then
  local owner, secret
  owner, secret, was = holder(redis.call('HGET', names, ARGV[8]))
  if ARGV[9] ~= '' and secret == ARGV[9] then
    redis.call('HSET', names, ARGV[8], node .. ' ' .. session .. ' ' .. name)
    if redis.call('HINCRBY', nodes, owner, -1) <= 0 then
      redis.call('HDEL', nodes, owner)
    end
    redis.call('PUBLISH', channel, cjson.encode({type = 'retire', room = room, key = ARGV[8], node = node}))
    returning = true
  else
    taken = 1
  end
end
if name == '' or taken == 1 then
  name = nil
  for i = 18, #ARGV, 2 do
    if claim(ARGV[i], ARGV[i + 1]) then
      name = ARGV[i]
      break
    end
  end
  if not name then
    return redis.error_reply('no free fallback name')
  end
end
redis.call('HINCRBY', nodes, node, 1)
local epoch, seq, first, history = state(ARGV[11], tonumber(ARGV[12]), ARGV[13],
  tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16]))
hold()
if not returning and not further then
  presence('join', name)
elseif was ~= name then
  -- Back under another spelling of the same name (`Alice` for `alice`).
  redis.call('PUBLISH', channel, cjson.encode({type = 'nick', room = room, old = was, new = name}))
end
return {name, taken, redis.call('HLEN', names), epoch, seq, first, history}
