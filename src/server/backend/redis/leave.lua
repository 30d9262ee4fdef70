-- ARGV[7]: the key of the name leaving, ARGV[8]: its holder's session. Only
-- that holder may release a plain name: a retired connection's name is its
-- successor's. A person's connection takes one off its count on this node:
-- the person leaves with its last connection on any node.
local value = redis.call('HGET', names, ARGV[7])
if value then
  local owner, secret, name = holder(value)
  local per = person(value)
  local left = false
  if owner == node and secret == ARGV[8] then
    presence('leave', name)
    redis.call('HDEL', names, ARGV[7])
    left = true
  elseif per and per[node] then
    person_on(ARGV[7], value, node, per[node] - 1)
    left = true
  end
  if left then
    if redis.call('HINCRBY', nodes, node, -1) <= 0 then
      redis.call('HDEL', nodes, node)
    end
    expire_if_empty()
  end
end
return 0
