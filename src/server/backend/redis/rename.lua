-- ARGV[7]: the old name's key, ARGV[8]: the holder's session, ARGV[9]: the
-- new name, ARGV[10]: its key, ARGV[11]: the old name. Returns 1, or 0 if the
-- new key is held by someone else, or the old one is no longer this
-- session's (it returned on another connection, which holds it now).
local mine = node .. ' ' .. ARGV[8] .. ' '
local held = redis.call('HGET', names, ARGV[10])
if held and string.sub(held, 1, #mine) ~= mine then
  return 0
end
local old = redis.call('HGET', names, ARGV[7])
if not old or string.sub(old, 1, #mine) ~= mine then
  return 0
end
redis.call('HDEL', names, ARGV[7])
redis.call('HSET', names, ARGV[10], mine .. ARGV[9])
redis.call('PUBLISH', channel, cjson.encode({type = 'nick', room = room, old = ARGV[11], new = ARGV[9]}))
return 1
