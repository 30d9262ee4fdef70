-- ARGV[7]: the message event (JSON, any seq), ARGV[8]: history length,
-- ARGV[9]: an epoch in case the room is new (its data lost), ARGV[10]: the
-- last seq this node delivered in the room, ARGV[11]: history bytes.
-- Numbers the message, keeps it and publishes it in one step, so the order
-- of seqs is the order of delivery. Its time is kept for `keep_for`.
epoch(ARGV[9], tonumber(ARGV[10]))
local seq = redis.call('HINCRBY', meta, 'seq', 1)
redis.call('HSET', meta, 'last', clock())
local event = cjson.decode(ARGV[7])
event.seq = seq
local payload = cjson.encode(event)
local keep, keep_bytes = tonumber(ARGV[8]), tonumber(ARGV[11])
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
-- Its sender may have been taken for gone meanwhile (its node's heartbeat
-- lapsed): an empty room's expiry starts again from this message.
expire_if_empty()
redis.call('PUBLISH', channel, payload)
return seq
