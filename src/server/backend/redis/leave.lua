-- ARGV[7]: the key of the name leaving, ARGV[8]: its holder's session. Only
-- that holder may release it: a retired connection's name is its successor's.
local value = redis.call('HGET', names, ARGV[7])
if value then
  local owner, secret, name = holder(value)
  if owner == node and secret == ARGV[8] then
    presence('leave', name)
    redis.call('HDEL', names, ARGV[7])
    if redis.call('HINCRBY', nodes, node, -1) <= 0 then
      redis.call('HDEL', nodes, node)
    end
    expire_if_empty()
  end
end
return 0
