-- After the link comes back: ARGV[6] is an epoch in case the room is new,
-- ARGV[7..] the names this node's clients hold now. Names this node held but
-- whose clients left meanwhile leave; the others are claimed again.
-- Returns {names held elsewhere meanwhile, epoch, seq, first held seq, history}.
reap()
local mine = {}
for i = 7, #ARGV do mine[ARGV[i]] = true end
local all = redis.call('HGETALL', names)
for i = 1, #all, 2 do
  if all[i + 1] == node and not mine[all[i]] then
    presence('leave', all[i])
    redis.call('HDEL', names, all[i])
  end
end
local held, clashes = 0, 0
for name in pairs(mine) do
  local owner = redis.call('HGET', names, name)
  if not owner then
    redis.call('HSET', names, name, node)
    held = held + 1
  elseif owner == node then
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
local epoch, seq, first, history = state(ARGV[6])
return {clashes, epoch, seq, first, history}
