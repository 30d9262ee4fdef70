-- ARGV[6]: the message event (JSON, any seq), ARGV[7]: history length,
-- ARGV[8]: an epoch in case the room is new (its data lost), ARGV[9]: the
-- last seq this node delivered in the room, ARGV[10]: history bytes. Numbers the message, keeps it
-- and publishes it in one step, so the order of seqs is the order of delivery.
epoch(ARGV[8], tonumber(ARGV[9]))
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local event = cjson.decode(ARGV[6])
event.seq = seq
local payload = cjson.encode(event)
local keep, keep_bytes = tonumber(ARGV[7]), tonumber(ARGV[10])
if keep > 0 then
  redis.call('XADD', log, '0-' .. seq, 'e', payload)
  -- Bounded by count and by bytes (as stored): the oldest go first, the
  -- newest always stays. Counted in the meta hash, which goes with the log.
  local bytes = redis.call('HINCRBY', meta, 'bytes', #payload)
  local len = redis.call('XLEN', log)
  while len > 1 and (len > keep or bytes > keep_bytes) do
    local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
    redis.call('XDEL', log, oldest[1])
    bytes = redis.call('HINCRBY', meta, 'bytes', -#oldest[2][2])
    len = len - 1
  end
end
redis.call('PUBLISH', channel, payload)
return seq
