-- ARGV[6]: the old name, ARGV[7]: the new one. Returns 1, or 0 if taken.
if redis.call('HSETNX', names, ARGV[7], node) == 0 then
  return 0
end
if redis.call('HGET', names, ARGV[6]) == node then
  redis.call('HDEL', names, ARGV[6])
else
  redis.call('HINCRBY', nodes, node, 1)
end
redis.call('PUBLISH', channel, cjson.encode({type = 'nick', room = room, old = ARGV[6], new = ARGV[7]}))
return 1
