-- ARGV[6]: the old name's key, ARGV[7]: the holder's session, ARGV[8]: the
-- new name, ARGV[9]: its key, ARGV[10]: the old name. Returns 1, or 0 if the
-- new key is held by someone else, or the old one is no longer this
-- session's (it returned on another connection, which holds it now).
local mine = node .. ' ' .. ARGV[7] .. ' '
local held = redis.call('HGET', names, ARGV[9])
if held and string.sub(held, 1, #mine) ~= mine then
  return 0
end
local old = redis.call('HGET', names, ARGV[6])
if not old or string.sub(old, 1, #mine) ~= mine then
  return 0
end
redis.call('HDEL', names, ARGV[6])
redis.call('HSET', names, ARGV[9], mine .. ARGV[8])
redis.call('PUBLISH', channel, cjson.encode({type = 'nick', room = room, old = ARGV[10], new = ARGV[8]}))
return 1
