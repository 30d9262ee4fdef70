-- After the link comes back: ARGV[6] is an epoch in case the room is new,
-- ARGV[7] the last seq this node delivered and ARGV[8] its epoch, ARGV[9]
-- and ARGV[10] the most messages and bytes to catch up with, ARGV[11..] the
-- keys, sessions and names of this node's clients now, in threes. Names
-- this node held but whose clients left meanwhile leave; the others are
-- claimed again.
-- Returns {names held elsewhere meanwhile, epoch, seq, first caught-up seq,
-- the messages after ARGV[7] (bounded)}.
reap(false)
local mine = {}
for i = 11, #ARGV, 3 do
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
  forget_if_empty()
end
local floor = tonumber(ARGV[7])
local epoch, seq, first, history = state(ARGV[6], floor, ARGV[8], floor,
  tonumber(ARGV[9]), tonumber(ARGV[10]))
return {clashes, epoch, seq, first, history}
