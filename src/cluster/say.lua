-- ARGV[6]: the message event (JSON, any seq), ARGV[7]: history length,
-- ARGV[8]: an epoch in case the room is new (its data lost), ARGV[9]: the
-- last seq this node delivered in the room. Numbers the message, keeps it
-- and publishes it in one step, so the order of seqs is the order of delivery.
epoch(ARGV[8], tonumber(ARGV[9]))
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local event = cjson.decode(ARGV[6])
event.seq = seq
local payload = cjson.encode(event)
local keep = tonumber(ARGV[7])
if keep > 0 then
  redis.call('XADD', log, 'MAXLEN', keep, '0-' .. seq, 'e', payload)
end
redis.call('PUBLISH', channel, payload)
return seq
