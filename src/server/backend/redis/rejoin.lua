-- After the link comes back: ARGV[7] is an epoch in case the room is new,
-- ARGV[8] the last seq this node delivered and ARGV[9] its epoch, ARGV[10]
-- and ARGV[11] the most messages and bytes to catch up with, ARGV[12..] this
-- node's names now, in fours: key, name, a token holder's `sub` ('' for a
-- plain name), and the plain name's session secret or the person's number
-- of connections here. Names this node held but whose clients left
-- meanwhile leave (a person's count here goes, and it leaves if that was
-- its last); the others are claimed again, a person's count here set.
-- Returns {names held elsewhere meanwhile, epoch, seq, first caught-up seq,
-- the messages after ARGV[8] (bounded)}.
reap(false)
local mine, people = {}, {}
for i = 12, #ARGV, 4 do
  if ARGV[i + 2] == '' then
    mine[ARGV[i]] = node .. ' ' .. ARGV[i + 3] .. ' ' .. ARGV[i + 1]
  else
    people[ARGV[i]] = {name = ARGV[i + 1], sub = ARGV[i + 2], count = tonumber(ARGV[i + 3])}
  end
end
local all = redis.call('HGETALL', names)
for i = 1, #all, 2 do
  local key, value = all[i], all[i + 1]
  local owner, _, name = holder(value)
  if owner == node and mine[key] ~= value then
    presence('leave', name)
    redis.call('HDEL', names, key)
  elseif not owner then
    local per, _, sub = person(value)
    local ours = people[key]
    if per and per[node] and not (ours and ours.sub == sub) then
      person_on(key, value, node, 0)
    end
  end
end
local held, clashes = 0, 0
for key, value in pairs(mine) do
  local current = redis.call('HGET', names, key)
  if not current then
    redis.call('HSET', names, key, value)
    held = held + 1
  elseif current == value then
    held = held + 1
  else
    clashes = clashes + 1
  end
end
for key, ours in pairs(people) do
  local current = redis.call('HGET', names, key)
  local per, name, sub
  if current then
    per, name, sub = person(current)
  else
    per, name, sub = {}, ours.name, ours.sub
  end
  if sub == ours.sub then
    per[node] = ours.count
    redis.call('HSET', names, key, person_value(per, name, sub))
    held = held + ours.count
  else
    clashes = clashes + 1
  end
end
if held > 0 then
  redis.call('HSET', nodes, node, held)
else
  redis.call('HDEL', nodes, node)
end
local floor = tonumber(ARGV[8])
local epoch, seq, first, history = state(ARGV[7], floor, ARGV[9], floor,
  tonumber(ARGV[10]), tonumber(ARGV[11]))
-- After `state`, which may have created the room's meta hash anew.
if held > 0 then
  hold()
else
  expire_if_empty()
end
return {clashes, epoch, seq, first, history}
