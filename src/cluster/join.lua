-- ARGV[6]: the requested name ('' for none), ARGV[7]: the fallback name,
-- ARGV[8]: an epoch for a new room.
-- Returns {name, taken, online, epoch, seq, first held seq, history}.
reap()
local function claim(name)
  return redis.call('HSETNX', names, name, node) == 1
end
local name, taken = ARGV[6], 0
if name == '' or not claim(name) then
  if name ~= '' then taken = 1 end
  local n = 1
  name = ARGV[7]
  while not claim(name) do
    n = n + 1
    name = ARGV[7] .. '~' .. n
  end
end
redis.call('HINCRBY', nodes, node, 1)
local epoch, seq, first, history = state(ARGV[8])
presence('join', name)
return {name, taken, redis.call('HLEN', names), epoch, seq, first, history}
