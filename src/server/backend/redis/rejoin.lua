-- After the link comes back: ARGV[7] is an epoch in case the room is new,
-- ARGV[8] the last seq this node delivered and ARGV[9] its epoch, ARGV[10]
-- and ARGV[11] the most messages and bytes to catch up with, ARGV[12..] the
-- keys, sessions and names of this node's clients now, in threes. Names
-- this node held but whose clients left meanwhile leave; the others are
-- claimed again.
-- Returns {names held elsewhere meanwhile, epoch, seq, first caught-up seq,
-- the messages after ARGV[8] (bounded)}.
reap(false)
local mine = {}
for i = 12, #ARGV, 3 do
  mine[ARGV[i]] = node .. ' ' .. ARGV[i + 1] .. ' ' .. ARGV[i + 2]
end
local all = redis.call('HGETALL', names)
for i = 1, #all, 2 do
  local owner, _, name = holder(all[i + 1])
  if owner == node and mine[all[i]] ~= all[i + 1] then
    presence('leave', name)
    redis.call('HDEL', names, all[i])
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
