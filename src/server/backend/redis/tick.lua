-- Every heartbeat, for each room with local clients: departed nodes leave,
-- and a large room gets its summary of joins and leaves. ARGV[7] and
-- ARGV[8], while this node has clients in the room: an epoch in case Redis
-- lost the room or went back in time, and the last seq this node delivered.
reap(false)
if ARGV[8] then
  epoch(ARGV[7], tonumber(ARGV[8]))
end
local counts = redis.call('HMGET', meta, 'joined', 'left')
local joined, left = tonumber(counts[1]) or 0, tonumber(counts[2]) or 0
if joined > 0 or left > 0 then
  redis.call('HSET', meta, 'joined', 0, 'left', 0)
  redis.call('PUBLISH', channel, cjson.encode({
    type = 'presence', room = room, joined = joined, left = left,
    online = redis.call('HLEN', names)}))
end
return 0
