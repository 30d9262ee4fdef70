-- ARGV[6]: the name leaving. Only the node holding it may release it.
if redis.call('HGET', names, ARGV[6]) == node then
  presence('leave', ARGV[6])
  redis.call('HDEL', names, ARGV[6])
  if redis.call('HINCRBY', nodes, node, -1) <= 0 then
    redis.call('HDEL', nodes, node)
  end
  forget_if_empty()
end
return 0
